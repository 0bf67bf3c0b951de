-- POST /refresh with a live refresh token each time. Each token works once: every answer
-- brings its session's next one, which goes back into the thread's pool for a later request.
-- wrk does not say which connection an answer came on, so the pool is per thread: it starts
-- with this thread's share of the tokens (more than its connections), each request takes one,
-- each good answer gives one back. Arguments: the path, the file of tokens, the thread count.
local path
local pool = {}
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   path = args[1]
   local threads = tonumber(args[3])
   local k = 0
   for token in io.lines(args[2]) do
      if #token > 0 then
         if k % threads == id then
            table.insert(pool, token)
         end
         k = k + 1
      end
   end
end

function request()
   local token = table.remove(pool, 1)
   if token == nil then
      -- None left (answers went wrong): this request fails, and counts.
      unexpected = unexpected + 1
      token = "none"
   end
   return wrk.format("POST", path, headers, '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
   local token = status == 200 and body:match('"refresh_token"%s*:%s*"([^"]+)"')
   if token then
      table.insert(pool, token)
   elseif status == 200 then
      unexpected = unexpected + 1
   end
end
