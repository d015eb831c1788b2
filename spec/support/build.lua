-- Which build's executables a spec runs. Specs tagged #tsan run the ThreadSanitizer build's
-- executables when scripts/test's TSan pass sets TARRY_TSAN_BUILD_DIR; everywhere else, and for
-- the busted process itself, the build under test (TARRY_BUILD_DIR).
local M = {}

M.dir = os.getenv("TARRY_BUILD_DIR") or "build"
M.tsan_dir = os.getenv("TARRY_TSAN_BUILD_DIR")
M.tsan = M.tsan_dir ~= nil and M.tsan_dir ~= ""

-- Every ThreadSanitizer report is fatal, with this exit code.
M.TSAN_EXIT = 66
M.tsan_options = "halt_on_error=1:exitcode=" .. M.TSAN_EXIT .. ":second_deadlock_stack=1"

--- The path of executable `name`: from the TSan build in the TSan pass, else from the build under test.
function M.bin(name)
  return (M.tsan and M.tsan_dir or M.dir) .. "/bin/" .. name
end

--- A shell prefix that sets TSAN_OPTIONS in the TSan pass (empty otherwise).
function M.env_prefix()
  return M.tsan and ("TSAN_OPTIONS=" .. M.tsan_options .. " ") or ""
end

return M
