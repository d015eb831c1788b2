-- Loaded by busted before the specs (see .busted).
package.path = "spec/?.lua;" .. package.path
