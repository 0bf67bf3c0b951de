-- POST /login as a user picked at random per request among user<first>..user<last>, all with
-- the bench's password. Arguments: the path, first, last, the password.
local path, first, last, password
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   path, first, last, password = args[1], tonumber(args[2]), tonumber(args[3]), args[4]
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local body = '{"email":"user' .. math.random(first, last) .. '@bench.example","password":"' ..
      password .. '"}'
   return wrk.format("POST", path, headers, body)
end
