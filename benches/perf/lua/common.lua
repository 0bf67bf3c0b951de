-- Shared by every wrk script of `cargo bench --bench perf` (the bench writes this file, then
-- the phase's own part, into one script). wrk runs one Lua state per thread and one more for
-- setup() and done(). A script's init(args) finds the bench's arguments (after wrk's `--`)
-- from args[1] on: args[0] is the URL.

-- Answers a script counted as wrong beyond wrk's own "status > 399" (a refresh answer without
-- a new token, say), per thread; done() adds them up.
unexpected = 0

local threads = {}

function setup(thread)
   -- The thread's number, from 0, before its init(): scripts use it to keep apart what each
   -- thread sends (emails to register, refresh tokens).
   thread:set("id", #threads)
   table.insert(threads, thread)
end

-- One line the bench reads: what wrk counted, its latency percentiles (microseconds, wrk's own
-- histogram) and the scripts' own count.
function done(summary, latency, requests)
   local wrong = 0
   for _, thread in ipairs(threads) do
      wrong = wrong + (thread:get("unexpected") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "PERFJSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
      "\"status\":%d,\"timeout\":%d,\"unexpected\":%d,\"p50_us\":%.1f,\"p90_us\":%.1f," ..
      "\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f}\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, wrong,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean))
end
