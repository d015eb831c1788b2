--- SQL literals for drivers without bind parameters (LuaSQL): tarry's statements with `$1, $2, ...`
-- turned into one SQL text, every value written as a string constant that PostgreSQL reads back
-- byte for byte.
--
-- The form is an escape string constant, E'...', with every `\` and every `'` doubled. PostgreSQL
-- reads an E'' constant the same way whatever `standard_conforming_strings` says, so a host that
-- turns that setting off (or a server configured so) cannot make a backslash end the constant early;
-- a plain '...' would be safe only while the setting stays on. Nothing else is special inside: `$$`,
-- `--`, `;` and newlines are characters of the value.
--
-- The bytes must mean the same to the server as to us: the value must be valid UTF-8 with no NUL
-- (checked here, with the wording of the defer path's own check), and the connection's
-- client_encoding must be UTF8 (checked by the caller, tarry/host_connector.lua: in a client-only
-- encoding such as SJIS, a multi-byte character may end in the byte of `\` and swallow half of a
-- doubled one).
--
-- Each `$n` is followed by the explicit cast of tarry's statements (`$1::jsonb`); an uncast one stays
-- an untyped constant, resolved from its context as an untyped bind parameter would be.
-- @module tarry.sql_literal
local core = require "tarry.core"

local M = {}

-- Why s cannot be a value, or nil when it can: the messages of runtime/app.c's storable().
local function unstorable(name, s)
  local nul = s:find("\0", 1, true)
  if nul then return string.format("%s has a NUL byte at byte %d (PostgreSQL cannot store it)", name, nul) end
  local ok, bad = utf8.len(s)
  if not ok then return string.format("%s is not valid UTF-8 (invalid byte at position %d)", name, bad) end
  return nil
end
M.unstorable = unstorable

--- The SQL constant of value v: NULL for nil or tarry.null, E'...' for a string (numbers and
-- booleans are written as their text). Raises an error object (code invalid_job) for a string
-- with a NUL byte or invalid UTF-8, naming it `name`; nothing is sent then.
function M.literal(v, name)
  if v == nil or v == core.null then return "NULL" end
  local t = type(v)
  if t == "number" or t == "boolean" then v = tostring(v)
  elseif t ~= "string" then error(string.format("%s: cannot write a %s as SQL", name or "value", t), 2) end
  local why = unstorable(name or "value", v)
  if why then error(core.error("invalid_job", why), 0) end
  return "E'" .. v:gsub("[\\']", { ["\\"] = "\\\\", ["'"] = "''" }) .. "'"
end

--- sql with each `$n` replaced by the literal of params[n], in one pass (a value's own `$2`
-- stays text). Raises as literal() does, and for a `$n` beyond #params.
function M.interpolate(sql, params)
  local n = params.n or #params
  return (sql:gsub("%$(%d+)", function(i)
    i = tonumber(i)
    if i < 1 or i > n then error(string.format("the statement uses $%d but has %d parameters", i, n), 0) end
    return M.literal(params[i], "$" .. i)
  end))
end

return M
