#include <catch2/catch_test_macros.hpp>

#include "fluxbatch/core/log.h"

TEST_CASE("log level can be raised and lowered", "[core]") {
  using fluxbatch::log::Level;
  const Level before = fluxbatch::log::level();
  fluxbatch::log::set_level(Level::kWarn);
  CHECK(fluxbatch::log::level() == Level::kWarn);
  fluxbatch::log::set_level(before);
  CHECK(fluxbatch::log::level() == before);
}
