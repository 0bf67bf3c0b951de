-- POST /register, a new account per request: the email is unique by the phase's tag, the
-- thread and a counter. Arguments: the path, the tag, the password.
local path, tag, password
local n = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   path, tag, password = args[1], args[2], args[3]
end

function request()
   n = n + 1
   local body = '{"email":"reg-' .. tag .. '-' .. id .. '-' .. n .. '@bench.example","password":"' ..
      password .. '"}'
   return wrk.format("POST", path, headers, body)
end
