-- GET of a path with an access token per request, taken in turn from a list.
-- Arguments: the path, the file of tokens (one per line).
local requests = {}
local i = 0

function init(args)
   local path = args[1]
   for token in io.lines(args[2]) do
      if #token > 0 then
         table.insert(requests, wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token }))
      end
   end
   assert(#requests > 0, "no tokens in " .. args[2])
   -- Threads start at different places in the list.
   i = (id * 7919) % #requests
end

function request()
   i = i % #requests + 1
   return requests[i]
end
