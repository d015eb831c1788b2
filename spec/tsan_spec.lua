-- The ThreadSanitizer pass of scripts/test must detect races, or its green means nothing.
-- Tagged #tsanonly: scripts/test runs it only in that pass (the other builds exclude the tag).
local build = require "support.build"

describe("the ThreadSanitizer pass #tsan #tsanonly", function()
  it("runs the TSan build's executables", function()
    assert.is_true(build.tsan, "TARRY_TSAN_BUILD_DIR is not set: run this file in scripts/test's TSan pass")
  end)

  it("reports the deliberate data race in spec/support/tsan_canary.c", function()
    local cmd = build.env_prefix() .. build.bin("tsan_canary") .. " >/dev/null 2>&1"
    local _, _, code = os.execute(cmd)
    assert.are.equal(build.TSAN_EXIT, code)
  end)
end)
