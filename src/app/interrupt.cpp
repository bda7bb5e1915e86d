// SIGINT / SIGTERM -> atomic flag. Only async-signal-safe calls in the handler.
#include "interrupt.h"

#include <pthread.h>
#include <unistd.h>

#include <csignal>

namespace fluxbatch::app {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};
struct sigaction g_previous_int {};
struct sigaction g_previous_term {};

void say(const char* text, size_t size) { [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, text, size); }

void on_signal(int sig) {
  int none = 0;
  const bool first = g_signal.compare_exchange_strong(none, sig);
  g_stop.store(true);
  if (sig == SIGINT) {
    static const char kMessage[] =
        "\nfluxbatch: interrupted: finishing the images in hand (at most --grace seconds), then stopping "
        "(Ctrl-C again to abort now)\n";
    say(kMessage, sizeof kMessage - 1);
  } else if (first) {
    static const char kMessage[] =
        "\nfluxbatch: terminated (SIGTERM): finishing the images in hand (at most --grace seconds), then stopping\n";
    say(kMessage, sizeof kMessage - 1);
  }
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_stop.store(false);
  g_signal.store(0);
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // the second Ctrl-C gets the default action
  sigaction(SIGINT, &action, &g_previous_int);
  action.sa_flags = 0;  // every SIGTERM lands here: the first one counts
  sigaction(SIGTERM, &action, &g_previous_term);
  // A --devices worker starts with both signals blocked (render_workers.cpp): one its parent forwarded
  // while it was still starting has waited, pending, and lands in the handler now.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &g_previous_int, nullptr);
  sigaction(SIGTERM, &g_previous_term, nullptr);
}

const std::atomic<bool>& InterruptGuard::stop_flag() const { return g_stop; }

int stop_signal() { return g_signal.load(); }

}  // namespace fluxbatch::app
