// SIGINT -> atomic flag. Only async-signal-safe calls in the handler.
#include "interrupt.h"

#include <unistd.h>

#include <csignal>

namespace fluxbatch::app {
namespace {

std::atomic<bool> g_stop{false};
struct sigaction g_previous {};

void on_sigint(int) {
  g_stop.store(true);
  static const char kMessage[] =
      "\nfluxbatch: interrupted: finishing the images in hand, then stopping (Ctrl-C again to abort now)\n";
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_stop.store(false);
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // the second Ctrl-C gets the default action
  sigaction(SIGINT, &action, &g_previous);
}

InterruptGuard::~InterruptGuard() { sigaction(SIGINT, &g_previous, nullptr); }

const std::atomic<bool>& InterruptGuard::stop_flag() const { return g_stop; }

}  // namespace fluxbatch::app
