-- Running the `tarry` command line in specs, as a user would: its output, its exit code.
local db = require "support.db"

local M = {}

local q = db.shell_quote
M.BIN = (os.getenv("TARRY_BUILD_DIR") or "build") .. "/bin/tarry"

function M.read_file(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  return text
end

function M.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

local function absolute(path)
  return path:sub(1, 1) == "/" and path or (os.getenv("PWD") .. "/" .. path)
end

--- `tarry argv...` with extra environment variables, optionally in directory `cwd` and with
-- stdin from a file: returns { out=, err=, code=, err_lines= }. A process killed by a signal fails.
function M.run(argv, env, cwd, stdin)
  local words = { "exec env" }
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  words[#words + 1] = q(absolute(M.BIN))
  for _, a in ipairs(argv) do words[#words + 1] = q(a) end
  local errfile = os.tmpname()
  local cmd = table.concat(words, " ") .. " 2>" .. errfile .. " <" .. q(stdin or "/dev/null")
  if cwd then cmd = "cd " .. q(cwd) .. " && " .. cmd end
  local pipe = assert(io.popen(cmd, "r"))
  local out = pipe:read("a")
  local _, how, code = pipe:close()
  local err = M.read_file(errfile)
  os.remove(errfile)
  assert(how == "exit", "tarry was killed by signal " .. tostring(code) .. ": " .. err)
  local lines = 0
  for _ in err:gmatch("[^\n]*\n") do lines = lines + 1 end
  return { out = out, err = err, code = code, err_lines = lines }
end

--- `tarry --conninfo <database name's conninfo> argv...`
function M.run_on(name, argv, env)
  local full = { "--conninfo", db.conninfo(name) }
  for _, a in ipairs(argv) do full[#full + 1] = a end
  return M.run(full, env)
end

return M
