// The --devices parent: fork/exec of the workers, their pipes, one progress display, one exit code.
#include "render_workers.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "exit_codes.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/device.h"
#include "interrupt.h"

extern char** environ;

namespace fluxbatch::app {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t end = text.find(sep); ; end = text.find(sep, start)) {
    out.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

bool digits(const std::string& s) { return !s.empty() && s.size() <= 4 && s.find_first_not_of("0123456789") == std::string::npos; }

// The command line again, for one worker: the options only the parent acts on removed, then the
// worker's device, JSON events on stdout, its name and the session's start appended.
std::vector<std::string> worker_argv(const std::vector<std::string>& argv, const WorkerDevice& device,
                                     int64_t session_offset, const std::string& exe) {
  static const std::vector<std::string> kDropped = {"--devices", "--device", "--progress", "--progress-interval",
                                                     "--worker-name", "--session-offset"};
  std::vector<std::string> out{exe};
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    bool dropped = false;
    for (const std::string& option : kDropped) {
      if (a == option) {
        ++i;  // and its value
        dropped = true;
      } else if (a.rfind(option + "=", 0) == 0) {
        dropped = true;
      }
    }
    if (!dropped) out.push_back(a);
  }
  for (const std::string& extra : {std::string("--device"), device.device, std::string("--progress"), std::string("json"),
                                   std::string("--worker-name"), device.name, std::string("--session-offset"),
                                   std::to_string(session_offset)}) {
    out.push_back(extra);
  }
  return out;
}

std::vector<std::string> worker_env(const WorkerDevice& device) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (device.visible && std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) == 0) continue;
    env.emplace_back(*e);
  }
  if (device.visible) env.push_back("CUDA_VISIBLE_DEVICES=" + *device.visible);
  return env;
}

std::string self_exe(const std::vector<std::string>& argv) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) return exe.string();
  return argv.empty() ? std::string("fluxbatch") : argv[0];
}

// A worker's process, its two pipes and what its events said.
struct Worker {
  WorkerDevice device;
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_buf, err_buf;
  int status = 0;
  bool exited = false;
  std::string state = "starting";  // for the progress line
  std::string last_error;          // its last "fluxbatch: ..." line
  json done;                       // its "done" event
  int64_t rendered = 0, failed = 0, cached = 0;
};

void spawn(Worker& w, const std::vector<std::string>& args, const std::vector<std::string>& env) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    throw DeviceError("--devices: cannot create a pipe: " + std::string(std::strerror(errno)));
  }
  std::vector<char*> argv_c, env_c;
  for (const std::string& a : args) argv_c.push_back(const_cast<char*>(a.c_str()));
  argv_c.push_back(nullptr);
  for (const std::string& e : env) env_c.push_back(const_cast<char*>(e.c_str()));
  env_c.push_back(nullptr);
  const pid_t parent = ::getpid();
  // The worker is born with SIGINT / SIGTERM blocked and keeps them blocked through execve, until its
  // InterruptGuard takes them: a stop the parent forwards while the worker is still starting waits for
  // that handler instead of killing the worker. (Blocked around the fork, not in the child, which may
  // run only after the parent has forwarded a Ctrl-C.)
  sigset_t stop_signals, previous;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, &previous);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here on. Own process group: a terminal's Ctrl-C reaches the
    // parent alone, which forwards it once. If the parent dies, so does the worker.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    ::execve(argv_c[0], argv_c.data(), env_c.data());
    ::_exit(127);
  }
  const int fork_error = errno;
  ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) throw DeviceError("--devices: cannot start a worker: " + std::string(std::strerror(fork_error)));
  ::close(out[1]);
  ::close(err[1]);
  w.pid = pid;
  w.out_fd = out[0];
  w.err_fd = err[0];
}

// Complete lines from `fd` into `buf`; false at end of file.
bool drain(int fd, std::string& buf, const std::function<void(const std::string&)>& on_line) {
  char chunk[65536];
  const ssize_t n = ::read(fd, chunk, sizeof chunk);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) {
    if (!buf.empty()) on_line(buf);
    buf.clear();
    return false;
  }
  buf.append(chunk, static_cast<size_t>(n));
  size_t start = 0;
  for (size_t end = buf.find('\n'); end != std::string::npos; end = buf.find('\n', start)) {
    on_line(buf.substr(start, end - start));
    start = end + 1;
  }
  buf.erase(0, start);
  return true;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "status " + std::to_string(status);
}

}  // namespace

std::vector<WorkerDevice> parse_devices(const std::string& text, int cuda_count,
                                        const std::optional<std::string>& visible) {
  std::vector<std::string> entries;
  if (text == "all") {
    if (cuda_count < 1) throw DeviceError("--devices all: no CUDA device is available on this machine");
    for (int i = 0; i < cuda_count; ++i) entries.push_back(std::to_string(i));
  } else {
    entries = split(text, ',');
  }
  const std::vector<std::string> visible_list = visible ? split(*visible, ',') : std::vector<std::string>{};
  std::vector<WorkerDevice> out;
  std::map<std::string, int> seen;
  for (std::string entry : entries) {
    if (entry == "cuda") entry = "0";
    if (entry.rfind("cuda:", 0) == 0) entry = entry.substr(5);
    WorkerDevice w;
    if (entry == "cpu") {
      w.device = "cpu";
    } else if (digits(entry)) {
      const int index = std::stoi(entry);
      if (index >= cuda_count) {
        throw DeviceError("--devices " + text + ": CUDA device " + entry + " does not exist (this machine has " +
                          std::to_string(cuda_count) + ")");
      }
      w.device = "cuda:0";  // the worker sees its card alone
      w.visible = visible ? visible_list.at(static_cast<size_t>(index)) : entry;
      w.name = "cuda:" + entry;
    } else {
      throw InputError("--devices: expected all or a comma-separated list of CUDA indices (0,1) and cpu, got '" +
                       text + "'");
    }
    if (w.name.empty()) w.name = "cpu";
    out.push_back(w);
  }
  if (out.empty() || out.size() > 64) throw InputError("--devices: from 1 to 64 workers, got '" + text + "'");
  // Repeated devices: name each worker of a device ("cpu#1", "cpu#2").
  for (const WorkerDevice& w : out) ++seen[w.name];
  std::map<std::string, int> next;
  for (WorkerDevice& w : out) {
    if (seen[w.name] > 1) w.name += "#" + std::to_string(++next[w.name]);
  }
  return out;
}

runtime::RunSummary run_workers(const RenderCommand& command, const job::JobSpec& spec, const job::Shard& shard) {
  if (command.cli != nullptr && command.cli->count("--device") > 0) {
    throw InputError("--device and --devices: give one (--devices starts a worker per device)");
  }
  const char* visible_env = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::optional<std::string> visible = visible_env ? std::optional<std::string>(visible_env) : std::nullopt;
  const bool wants_cuda = command.scale.devices.find_first_of("0123456789") != std::string::npos ||
                          command.scale.devices == "all" || command.scale.devices.find("cuda") != std::string::npos;
  const std::vector<WorkerDevice> devices =
      parse_devices(command.scale.devices, wants_cuda ? runtime::cuda_device_count() : 0, visible);

  // The session starts now: lines past the manifest's current end are this session's, for every worker.
  io::ensure_directory(spec.output_dir);
  struct stat st {};
  const std::string manifest = (fs::path(spec.output_dir) / io::kManifestFileName).string();
  const int64_t session_offset = ::stat(manifest.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
  const runtime::JobPlan plan = runtime::plan_job(spec, spec.output_dir, std::nullopt, command.overwrite, 1, {}, false, shard);
  const int64_t to_render = plan.count(runtime::ItemState::kRender);
  const int64_t skipped = plan.count(runtime::ItemState::kSkip);
  std::string names;
  for (const WorkerDevice& d : devices) names += (names.empty() ? "" : ", ") + d.name;
  // Ctrl-C is taken from here on: before the first fork, so no signal slips between, and before the line
  // that announces the workers.
  InterruptGuard interrupt;
  log::info("--devices: " + std::to_string(devices.size()) + " worker(s) (" + names + ") share " + spec.path + " -> " +
            spec.output_dir + ": " + std::to_string(to_render) + " image(s) to render, " + std::to_string(skipped) +
            " finished earlier");

  std::vector<Worker> workers(devices.size());
  const auto started = std::chrono::steady_clock::now();
  const std::string exe = self_exe(command.argv);
  for (size_t i = 0; i < devices.size(); ++i) {
    workers[i].device = devices[i];
    spawn(workers[i], worker_argv(command.argv, devices[i], session_offset, exe), worker_env(devices[i]));
  }

  int64_t done = 0;
  const auto detail = [&workers]() {
    std::string out = std::to_string(workers.size()) + " workers:";
    for (const Worker& w : workers) out += " " + w.device.name + " " + w.state + ",";
    out.pop_back();
    return out;
  };
  std::unique_ptr<runtime::Progress> progress = make_progress(command.progress, nullptr, detail);
  if (progress) progress->job_started({static_cast<int64_t>(spec.items.size()), to_render, skipped, 0, 0});

  const auto on_event = [&](Worker& w, const std::string& line) {
    json e;
    try {
      e = json::parse(line);
    } catch (const json::exception&) {
      log::info(w.device.name + " | " + line);  // not an event: show it
      return;
    }
    const std::string kind = e.value("event", "");
    if (kind == "stage") {
      w.state = e.value("stage", "");
    } else if (kind == "batch") {
      w.state = e.value("state", "") == "started" ? "batch " + std::to_string(e.value("batch", 0)) : "between batches";
    } else if (kind == "step") {
      w.state = "step " + std::to_string(e.value("step", 0)) + "/" + std::to_string(e.value("steps", 0));
    } else if (kind == "image") {
      const bool ok = e.value("status", "") == "ok";
      const bool cached = e.value("cached", false);
      (ok ? w.rendered : w.failed) += 1;
      if (cached) ++w.cached;
      ++done;
      if (progress) {
        job::RenderItem item;  // what the event tells of it, so the parent's events carry the same fields
        item.file = e.value("file", "");
        item.prompt = e.value("prompt", "");
        item.index = e.value("index", int64_t{0});
        item.params.seed = e.value("seed", uint64_t{0});
        runtime::ImageEvent event;
        event.item = &item;
        event.path = e.value("path", "");
        event.ok = ok;
        event.cached = cached;
        event.error = e.value("error", "");
        event.generate_s = e.value("generate_s", 0.0);
        event.write_s = e.value("write_s", 0.0);
        event.done = done;
        event.to_render = to_render;
        progress->image_finished(event);
      }
    } else if (kind == "done") {
      w.done = e;
      w.state = "done";
    }
  };
  const auto on_log = [](Worker& w, const std::string& line) {
    if (line.rfind("fluxbatch: ", 0) == 0) w.last_error = line.substr(11);
    log::passthrough(w.device.name + " | " + line);
  };

  bool forwarded = false;
  for (;;) {
    if (interrupt.stop_flag().load() && !forwarded) {
      for (const Worker& w : workers) {
        if (!w.exited) ::kill(w.pid, stop_signal());
      }
      forwarded = true;
    }
    std::vector<pollfd> fds;
    std::vector<std::pair<size_t, bool>> owners;  // worker, is stdout
    for (size_t i = 0; i < workers.size(); ++i) {
      if (workers[i].out_fd >= 0) {
        fds.push_back({workers[i].out_fd, POLLIN, 0});
        owners.emplace_back(i, true);
      }
      if (workers[i].err_fd >= 0) {
        fds.push_back({workers[i].err_fd, POLLIN, 0});
        owners.emplace_back(i, false);
      }
    }
    if (fds.empty()) break;
    const int ready = ::poll(fds.data(), fds.size(), 100);
    if (ready < 0 && errno != EINTR) throw DeviceError("--devices: poll failed: " + std::string(std::strerror(errno)));
    for (size_t k = 0; ready > 0 && k < fds.size(); ++k) {
      if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Worker& w = workers[owners[k].first];
      int& fd = owners[k].second ? w.out_fd : w.err_fd;
      std::string& buf = owners[k].second ? w.out_buf : w.err_buf;
      const bool open = owners[k].second ? drain(fd, buf, [&](const std::string& l) { on_event(w, l); })
                                         : drain(fd, buf, [&](const std::string& l) { on_log(w, l); });
      if (!open) {
        ::close(fd);
        fd = -1;
      }
    }
  }
  for (Worker& w : workers) {
    while (::waitpid(w.pid, &w.status, 0) < 0 && errno == EINTR) {
    }
    w.exited = true;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  runtime::RunSummary summary;
  summary.total = static_cast<int64_t>(spec.items.size());
  summary.skipped = skipped;
  summary.other_shard = plan.count(runtime::ItemState::kOtherShard);
  std::string per_worker;
  std::string worst_error;
  int worst = 0;
  for (const Worker& w : workers) {
    summary.rendered += w.rendered;
    summary.failed += w.failed;
    summary.cached += w.cached;
    if (!w.done.is_null()) summary.blocked += w.done.value("blocked", int64_t{0});
    const int code = WIFEXITED(w.status) ? WEXITSTATUS(w.status) : -1;
    per_worker += (per_worker.empty() ? "" : ", ") + w.device.name + " " + std::to_string(w.rendered) + " image(s)";
    if (code != kExitOk && code != kExitSomeFailed && code != kExitInterrupted && code != kExitTerminated) {
      const std::string what = "worker " + w.device.name + " failed (" + describe_status(w.status) + ")" +
                               (w.last_error.empty() ? std::string() : ": " + w.last_error);
      log::error(what);
      if (worst_error.empty() || code == kExitInvalidInput) worst_error = what;
      worst = code == kExitInvalidInput ? kExitInvalidInput : std::max(worst, kExitModelOrDevice);
    }
  }
  // Each worker counts the images of the job still open when it stopped (all of them share one list):
  // a worker that ran to its end left none.
  for (const Worker& w : workers) {
    if (w.done.is_null()) continue;
    summary.not_started = std::max(summary.not_started, w.done.value("not_started", int64_t{0}));
    summary.interrupted = summary.interrupted || w.done.value("interrupted", false);
  }
  summary.seconds = wall;
  char head[160];
  std::snprintf(head, sizeof head, "summary: %lld image(s) by %zu workers in %.2f s, %.0f images/hour",
                static_cast<long long>(summary.rendered), workers.size(), wall,
                wall > 0.0 ? 3600.0 * static_cast<double>(summary.rendered) / wall : 0.0);
  log::info(std::string(head) + " (" + per_worker + ")");
  if (progress) {
    runtime::ProgressDone d;
    d.rendered = summary.rendered;
    d.cached = summary.cached;
    d.skipped = summary.skipped;
    d.failed = summary.failed;
    d.blocked = summary.blocked;
    d.not_started = summary.not_started;
    d.interrupted = summary.interrupted;
    d.wall_s = wall;
    d.images_per_hour = wall > 0.0 ? 3600.0 * static_cast<double>(summary.rendered) / wall : 0.0;
    d.exit_code = worst != 0 ? worst : exit_code_for(summary);
    progress->finish(d);
  }
  if (worst == kExitInvalidInput) throw InputError(worst_error);
  if (worst != 0) throw DeviceError(worst_error);
  return summary;
}

}  // namespace fluxbatch::app
