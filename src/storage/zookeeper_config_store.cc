// The ZooKeeper ConfigStore (libzookeeper-mt, the C client). See config_store.h for the layout and
// the contract; the notes here are about threads and consistency.
//
// Threads. The C client runs an I/O thread and a completion thread per handle; its synchronous
// calls block until the completion thread has processed the reply, and watchers run on that
// completion thread. So a watcher must never make a ZooKeeper call or take a lock that a thread
// waiting in a synchronous call may hold: Watcher() only sets a flag. A notifier thread of our own
// does the work: re-arms the watches, decides whether the namespace changed, replaces an expired
// session, and calls the on_change callbacks (with no lock of ours held).
//
// Consistency. Every Write is one zoo_multi: the creates and sets of the keys plus a set of the
// namespace znode with the expected version = `generation_`, the version this store last read
// (Scan) or wrote. Anything another server wrote in between bumped that version, so the multi fails
// as a whole (ZBADVERSION) and the caller gets ABORTED. Scan reads the child list and the values,
// then checks that the namespace znode's version and child version did not move meanwhile (retrying
// if they did), so what it returns is one generation's state.
//
// Notifications. The notifier compares the namespace znode's (version, child version) with what it
// last reported (`seen_*`) and calls on_change when they differ. The store's own successful write
// advances `seen_*` (when nothing else was pending), so a server is not told of its own changes. A
// Scan does not: a partial read is not a reload, so the watch still reports another server's change
// even if some Scan happened to read it first (at worst a reader reloads once more than needed).
#ifndef THREADED
#define THREADED  // the synchronous API of libzookeeper_mt
#endif
#include <zookeeper/zookeeper.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/status.h"
#include "spdlog/spdlog.h"
#include "storage/config_store.h"

namespace kosh::storage {

std::string EscapeZnodeName(absl::string_view key) {
  if (key.empty()) return "%";
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(key.size());
  for (unsigned char c : key) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

bool UnescapeZnodeName(absl::string_view name, std::string* key) {
  key->clear();
  if (name == "%") return true;
  if (name.empty()) return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;  // lower case is not what EscapeZnodeName writes
  };
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c != '%') {
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
        return false;
      }
      key->push_back(c);
      continue;
    }
    if (i + 2 >= name.size()) return false;
    int hi = hex(name[i + 1]), lo = hex(name[i + 2]);
    if (hi < 0 || lo < 0) return false;
    char decoded = static_cast<char>(hi * 16 + lo);
    // Only bytes that EscapeZnodeName escapes, so that every key has exactly one name.
    if (EscapeZnodeName(absl::string_view(&decoded, 1)).size() == 1) return false;
    key->push_back(decoded);
    i += 2;
  }
  return true;
}

namespace {

// A znode holds at most jute.maxbuffer (default 1 MiB less one byte) and so does one request; keep
// headroom for the paths and the protocol's framing.
constexpr size_t kMaxRequestBytes = 1000000;
constexpr int kScanAttempts = 8;
constexpr int32_t kUnknownVersion = -2;  // "read the namespace again before writing"

const char* ZError(int rc) { return zerror(rc); }

bool IsConnectionError(int rc) {
  return rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT || rc == ZSESSIONEXPIRED || rc == ZINVALIDSTATE ||
         rc == ZCLOSING || rc == ZSESSIONMOVED;
}

bool ValidNodeName(absl::string_view n) {
  if (n.empty() || n == "." || n == ".." || n == "zookeeper") return false;
  for (char c : n) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
          c == '.')) {
      return false;
    }
  }
  return true;
}

// The C client logs to stderr by default; route its warnings and errors (connection refused while
// a server is down, ...) to the debug log: the store logs its own state changes at info/warn.
void ClientLog(const char* message) { spdlog::debug("zookeeper client: {}", message); }

void IgnoreEvents(zhandle_t*, int, int, const char*, void*) {}

// Reads the data of `path` into *value (a null znode reads as empty). Returns the ZooKeeper code.
int GetData(zhandle_t* zh, const std::string& path, std::vector<char>* buf, std::string* value) {
  for (;;) {
    int len = static_cast<int>(buf->size());
    Stat st{};
    int rc = zoo_get(zh, path.c_str(), 0, buf->data(), &len, &st);
    if (rc != ZOK) return rc;
    if (st.dataLength > len) {  // truncated: grow and read again
      buf->resize(static_cast<size_t>(st.dataLength));
      continue;
    }
    value->assign(buf->data(), static_cast<size_t>(std::max(len, 0)));
    return ZOK;
  }
}

class ZooKeeperConfigStore final : public ConfigStore {
 public:
  static absl::StatusOr<std::unique_ptr<ZooKeeperConfigStore>> Open(const ZooKeeperOptions& options,
                                                                     const std::string& ns);
  ~ZooKeeperConfigStore() override;

  absl::Status Scan(absl::string_view prefix,
                    const std::function<bool(absl::string_view key, absl::string_view value)>& fn) override;
  absl::Status Write(const std::vector<std::pair<std::string, std::string>>& puts) override;
  void Watch(std::function<void()> on_change) override;
  bool Connected() const override;

  absl::Status ExpireSessionForTest();

 private:
  ZooKeeperConfigStore(ZooKeeperOptions options, std::string ns, std::string path)
      : options_(std::move(options)), ns_(std::move(ns)), path_(std::move(path)) {}

  static void Watcher(zhandle_t* zh, int type, int state, const char* path, void* ctx);
  // A new handle (session establishment is asynchronous); nullptr with errno on failure.
  zhandle_t* NewHandle();
  // Creates path_ and its ancestors where missing.
  int EnsurePath(zhandle_t* zh);
  absl::Status Unavailable(absl::string_view what, int rc) const;
  void Run();  // the notifier thread
  // Re-arms the child and data watches of path_; sets *changed if the namespace differs from what
  // this store has seen.
  absl::Status ArmAndCheck(bool* changed);
  void Renew();
  void Notify();
  static bool HasWork(ZooKeeperConfigStore* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->ev_mu_) {
    return s->stop_ || s->node_event_ || s->session_event_;
  }

  const ZooKeeperOptions options_;
  const std::string ns_;
  const std::string path_;  // <root>/<ns>

  // The handle; replaced (writer lock) only when its session expired. ZooKeeper calls hold the
  // reader lock. Acquired before mu_.
  mutable absl::Mutex handle_mu_;
  zhandle_t* zh_ ABSL_GUARDED_BY(handle_mu_) = nullptr;

  // What this store knows of the namespace. Held across the ZooKeeper calls of Scan, Write and the
  // watch check, which it serialises.
  absl::Mutex mu_ ABSL_ACQUIRED_AFTER(handle_mu_);
  int32_t generation_ ABSL_GUARDED_BY(mu_) = kUnknownVersion;  // what Write expects
  int32_t generation_cversion_ ABSL_GUARDED_BY(mu_) = kUnknownVersion;
  std::set<std::string> known_ ABSL_GUARDED_BY(mu_);            // child names as of generation_
  // The (version, cversion) of the namespace znode that on_change callers are known to have seen.
  int32_t seen_version_ ABSL_GUARDED_BY(mu_) = kUnknownVersion;
  int32_t seen_cversion_ ABSL_GUARDED_BY(mu_) = kUnknownVersion;

  // Set by Watcher, consumed by the notifier thread.
  absl::Mutex ev_mu_;
  bool node_event_ ABSL_GUARDED_BY(ev_mu_) = false;
  bool session_event_ ABSL_GUARDED_BY(ev_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(ev_mu_) = false;

  absl::Mutex watchers_mu_;
  std::vector<std::function<void()>> watchers_ ABSL_GUARDED_BY(watchers_mu_);

  std::thread notifier_;
};

void ZooKeeperConfigStore::Watcher(zhandle_t*, int type, int, const char*, void* ctx) {
  auto* self = static_cast<ZooKeeperConfigStore*>(ctx);
  absl::MutexLock l(&self->ev_mu_);
  if (type == ZOO_SESSION_EVENT) {
    self->session_event_ = true;
  } else {
    self->node_event_ = true;
  }
}

zhandle_t* ZooKeeperConfigStore::NewHandle() {
  static std::once_flag once;
  std::call_once(once, [] { zoo_set_debug_level(ZOO_LOG_LEVEL_WARN); });
  return zookeeper_init2(options_.hosts.c_str(), &ZooKeeperConfigStore::Watcher,
                         static_cast<int>(options_.session_timeout_ms), nullptr, this, 0, &ClientLog);
}

absl::Status ZooKeeperConfigStore::Unavailable(absl::string_view what, int rc) const {
  return absl::UnavailableError(
      absl::StrCat("ZooKeeper at ", options_.hosts, ": ", what, " ", path_, ": ", ZError(rc)));
}

int ZooKeeperConfigStore::EnsurePath(zhandle_t* zh) {
  std::string prefix;
  for (absl::string_view part : absl::StrSplit(absl::string_view(path_).substr(1), '/')) {
    absl::StrAppend(&prefix, "/", part);
    int rc = zoo_create(zh, prefix.c_str(), nullptr, -1, &ZOO_OPEN_ACL_UNSAFE, ZOO_PERSISTENT, nullptr, 0);
    if (rc != ZOK && rc != ZNODEEXISTS) return rc;
  }
  return ZOK;
}

absl::StatusOr<std::unique_ptr<ZooKeeperConfigStore>> ZooKeeperConfigStore::Open(const ZooKeeperOptions& options,
                                                                                 const std::string& ns) {
  if (options.hosts.empty()) return absl::InvalidArgumentError("zookeeper.hosts: empty");
  if (!ValidNodeName(ns)) {
    return absl::InvalidArgumentError(absl::StrCat("ZooKeeper namespace \"", ns, "\" is not a valid znode name"));
  }
  if (options.root.empty() || options.root[0] != '/' || (options.root.size() > 1 && options.root.back() == '/')) {
    return absl::InvalidArgumentError(
        absl::StrCat("zookeeper.root: \"", options.root, "\" must be an absolute path without a trailing /"));
  }
  if (options.root != "/") {
    for (absl::string_view part : absl::StrSplit(absl::string_view(options.root).substr(1), '/')) {
      if (!ValidNodeName(part)) {
        return absl::InvalidArgumentError(
            absl::StrCat("zookeeper.root: \"", options.root, "\" has an invalid component \"", part, "\""));
      }
    }
  }
  if (options.session_timeout_ms <= 0 || options.session_timeout_ms > 3600000) {
    return absl::InvalidArgumentError("zookeeper.session_timeout: expected 1ms to 1h");
  }
  if (options.connect_timeout_ms <= 0) return absl::InvalidArgumentError("zookeeper.connect_timeout: must be positive");
  std::string path = options.root == "/" ? absl::StrCat("/", ns) : absl::StrCat(options.root, "/", ns);
  std::unique_ptr<ZooKeeperConfigStore> s(new ZooKeeperConfigStore(options, ns, std::move(path)));

  zhandle_t* zh = s->NewHandle();
  if (zh == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("zookeeper.hosts: cannot use \"", options.hosts, "\": ", std::strerror(errno)));
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  while (zoo_state(zh) != ZOO_CONNECTED_STATE) {
    if (std::chrono::steady_clock::now() >= deadline || zoo_state(zh) == ZOO_EXPIRED_SESSION_STATE ||
        zoo_state(zh) == ZOO_AUTH_FAILED_STATE) {
      zookeeper_close(zh);
      return absl::UnavailableError(absl::StrCat("cannot connect to ZooKeeper at ", options.hosts, " within ",
                                                 options.connect_timeout_ms, " ms (registry namespace \"", ns,
                                                 "\"); is the ensemble up and reachable?"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int rc = s->EnsurePath(zh);
  if (rc != ZOK) {
    zookeeper_close(zh);
    return absl::UnavailableError(
        absl::StrCat("ZooKeeper at ", options.hosts, ": cannot create ", s->path_, ": ", ZError(rc)));
  }
  {
    absl::WriterMutexLock h(&s->handle_mu_);
    s->zh_ = zh;
  }
  bool changed = false;
  RETURN_IF_ERROR(s->ArmAndCheck(&changed));  // the baseline: nothing has been seen yet
  s->notifier_ = std::thread([raw = s.get()] { raw->Run(); });
  spdlog::info("registry namespace \"{}\": ZooKeeper {} at {}", ns, s->path_, options.hosts);
  return s;
}

ZooKeeperConfigStore::~ZooKeeperConfigStore() {
  {
    absl::MutexLock l(&ev_mu_);
    stop_ = true;
  }
  if (notifier_.joinable()) notifier_.join();
  absl::WriterMutexLock h(&handle_mu_);
  if (zh_ != nullptr) zookeeper_close(zh_);  // joins the client's threads: no watcher runs after this
  zh_ = nullptr;
}

bool ZooKeeperConfigStore::Connected() const {
  absl::ReaderMutexLock h(&handle_mu_);
  return zh_ != nullptr && zoo_state(zh_) == ZOO_CONNECTED_STATE;
}

void ZooKeeperConfigStore::Watch(std::function<void()> on_change) {
  absl::MutexLock l(&watchers_mu_);
  watchers_.push_back(std::move(on_change));
}


absl::Status ZooKeeperConfigStore::Scan(
    absl::string_view prefix, const std::function<bool(absl::string_view key, absl::string_view value)>& fn) {
  std::vector<std::pair<std::string, std::string>> out;
  {
    absl::ReaderMutexLock h(&handle_mu_);
    if (zoo_state(zh_) != ZOO_CONNECTED_STATE) return Unavailable("not connected; cannot read", ZCONNECTIONLOSS);
    absl::MutexLock l(&mu_);
    std::vector<char> buf(64 << 10);
    bool consistent = false;
    for (int attempt = 0; attempt < kScanAttempts && !consistent; ++attempt) {
      String_vector children{};
      Stat before{};
      int rc = zoo_get_children2(zh_, path_.c_str(), 0, &children, &before);
      if (rc == ZNONODE) {  // removed behind our back (or a wiped ensemble): recreate it, empty
        rc = EnsurePath(zh_);
        if (rc != ZOK) return Unavailable("cannot create", rc);
        continue;
      }
      if (rc != ZOK) return Unavailable("cannot list", rc);
      std::set<std::string> names;
      std::vector<std::pair<std::string, std::string>> selected;  // (key, znode name)
      for (int i = 0; i < children.count; ++i) {
        std::string name = children.data[i];
        std::string key;
        if (!UnescapeZnodeName(name, &key)) {
          spdlog::warn("ZooKeeper {}: ignoring znode \"{}\", which Kosh did not write", path_, name);
        } else if (absl::StartsWith(key, prefix)) {
          selected.emplace_back(std::move(key), name);
        }
        names.insert(std::move(name));
      }
      deallocate_String_vector(&children);
      std::sort(selected.begin(), selected.end());  // byte order, as the embedded store's
      out.clear();
      bool raced = false;
      for (const auto& [key, name] : selected) {
        std::string value;
        rc = GetData(zh_, absl::StrCat(path_, "/", name), &buf, &value);
        if (rc == ZNONODE) {  // a concurrent change; the version check below fails too
          raced = true;
          break;
        }
        if (rc != ZOK) return Unavailable("cannot read", rc);
        out.emplace_back(key, std::move(value));
      }
      if (raced) continue;
      Stat after{};
      rc = zoo_exists(zh_, path_.c_str(), 0, &after);
      if (rc == ZNONODE) continue;
      if (rc != ZOK) return Unavailable("cannot read", rc);
      if (after.version != before.version || after.cversion != before.cversion) continue;
      consistent = true;
      generation_ = before.version;
      generation_cversion_ = before.cversion;
      known_ = std::move(names);
    }
    if (!consistent) {
      return absl::AbortedError(absl::StrCat("ZooKeeper ", path_, " kept changing while being read (", kScanAttempts,
                                             " attempts); try again"));
    }
  }
  for (const auto& [k, v] : out) {
    if (!fn(k, v)) break;
  }
  return absl::OkStatus();
}

absl::Status ZooKeeperConfigStore::Write(const std::vector<std::pair<std::string, std::string>>& puts) {
  if (puts.empty()) return absl::OkStatus();
  std::map<std::string, const std::string*> latest;  // a key given twice: the last value wins
  for (const auto& [k, v] : puts) latest[k] = &v;
  size_t total = 0;
  for (const auto& [k, v] : latest) {
    if (v->size() > kMaxRequestBytes) {
      return absl::ResourceExhaustedError(absl::StrCat("value of key \"", absl::CHexEscape(k), "\" is ", v->size(),
                                                       " bytes; a ZooKeeper znode holds at most ", kMaxRequestBytes));
    }
    total += v->size() + path_.size() + 3 * k.size() + 64;
  }
  if (total > kMaxRequestBytes) {
    return absl::ResourceExhaustedError(absl::StrCat("a write of ", latest.size(), " keys and about ", total,
                                                     " bytes exceeds ZooKeeper's request limit of ", kMaxRequestBytes,
                                                     " bytes"));
  }
  absl::ReaderMutexLock h(&handle_mu_);
  if (zoo_state(zh_) != ZOO_CONNECTED_STATE) return Unavailable("not connected; cannot write", ZCONNECTIONLOSS);
  absl::MutexLock l(&mu_);
  if (generation_ == kUnknownVersion) {
    return absl::AbortedError(absl::StrCat("ZooKeeper ", path_,
                                           ": the namespace must be read again before writing (it changed or the "
                                           "session was replaced); nothing was written"));
  }
  std::vector<std::string> paths;
  paths.reserve(latest.size());  // the ops point into these strings
  std::vector<zoo_op_t> ops(latest.size() + 1);
  std::vector<zoo_op_result_t> results(latest.size() + 1);
  std::vector<std::string> created;
  size_t i = 0;
  for (const auto& [k, v] : latest) {
    std::string name = EscapeZnodeName(k);
    paths.push_back(absl::StrCat(path_, "/", name));
    if (known_.contains(name)) {
      zoo_set_op_init(&ops[i], paths.back().c_str(), v->data(), static_cast<int>(v->size()), -1, nullptr);
    } else {
      zoo_create_op_init(&ops[i], paths.back().c_str(), v->data(), static_cast<int>(v->size()), &ZOO_OPEN_ACL_UNSAFE,
                         ZOO_PERSISTENT, nullptr, 0);
      created.push_back(std::move(name));
    }
    ++i;
  }
  // Last, so that its stat shows the child version after the creates. The multi is atomic, so the
  // position does not weaken the check.
  const int32_t base = generation_;
  std::string gen = absl::StrCat(base + 1);
  Stat gen_stat{};
  zoo_set_op_init(&ops[i], path_.c_str(), gen.data(), static_cast<int>(gen.size()), base, &gen_stat);
  int rc = zoo_multi(zh_, static_cast<int>(ops.size()), ops.data(), results.data());
  if (rc == ZOK) {
    const bool caught_up = seen_version_ == generation_ && seen_cversion_ == generation_cversion_;
    generation_ = gen_stat.version;
    generation_cversion_ = gen_stat.cversion;
    for (auto& n : created) known_.insert(std::move(n));
    // Our own write is not news to the caller; but if the caller had not yet been told of an
    // earlier change, the watch must still report it.
    if (caught_up) {
      seen_version_ = generation_;
      seen_cversion_ = generation_cversion_;
    }
    return absl::OkStatus();
  }
  generation_ = kUnknownVersion;
  if (rc == ZBADVERSION || rc == ZNODEEXISTS || rc == ZNONODE) {
    return absl::AbortedError(absl::StrCat("ZooKeeper ", path_, " was changed by another server since generation ",
                                           base, " was read; nothing was written (read it again and retry)"));
  }
  if (IsConnectionError(rc)) {
    return Unavailable("write interrupted (it may or may not have been applied) on", rc);
  }
  return absl::InternalError(absl::StrCat("ZooKeeper at ", options_.hosts, ": write to ", path_, ": ", ZError(rc)));
}

absl::Status ZooKeeperConfigStore::ArmAndCheck(bool* changed) {
  absl::ReaderMutexLock h(&handle_mu_);
  if (zoo_state(zh_) != ZOO_CONNECTED_STATE) return Unavailable("not connected; cannot watch", ZCONNECTIONLOSS);
  absl::MutexLock l(&mu_);
  String_vector children{};
  Stat st{};
  int rc = zoo_wget_children2(zh_, path_.c_str(), &ZooKeeperConfigStore::Watcher, this, &children, &st);
  if (rc == ZNONODE) {
    rc = EnsurePath(zh_);
    if (rc == ZOK) rc = zoo_wget_children2(zh_, path_.c_str(), &ZooKeeperConfigStore::Watcher, this, &children, &st);
  }
  if (rc != ZOK) return Unavailable("cannot watch", rc);
  deallocate_String_vector(&children);
  Stat data{};
  rc = zoo_wexists(zh_, path_.c_str(), &ZooKeeperConfigStore::Watcher, this, &data);
  if (rc != ZOK) return Unavailable("cannot watch", rc);
  *changed = data.version != seen_version_ || data.cversion != seen_cversion_;
  seen_version_ = data.version;
  seen_cversion_ = data.cversion;
  return absl::OkStatus();
}

void ZooKeeperConfigStore::Notify() {
  std::vector<std::function<void()>> fns;
  {
    absl::MutexLock l(&watchers_mu_);
    fns = watchers_;
  }
  for (auto& fn : fns) fn();
}

void ZooKeeperConfigStore::Renew() {
  zhandle_t* fresh = NewHandle();
  if (fresh == nullptr) {
    spdlog::error("ZooKeeper {} at {}: cannot open a new session: {}", path_, options_.hosts, std::strerror(errno));
    return;  // the old handle is still expired: the next round tries again
  }
  zhandle_t* old = nullptr;
  {
    absl::WriterMutexLock h(&handle_mu_);
    old = zh_;
    zh_ = fresh;
  }
  {
    absl::MutexLock l(&mu_);
    generation_ = kUnknownVersion;
    known_.clear();
  }
  if (old != nullptr) zookeeper_close(old);
  spdlog::warn("ZooKeeper {} at {}: the session expired; opened a new one and will reload once connected", path_,
               options_.hosts);
}

void ZooKeeperConfigStore::Run() {
  bool was_connected = true;
  bool rearm = false;  // the watches may be gone: set them again and compare versions
  bool force = false;  // tell the watchers once connected, changed or not (a new session)
  for (;;) {
    bool node_event = false, session_event = false;
    {
      absl::MutexLock l(&ev_mu_);
      ev_mu_.AwaitWithTimeout(absl::Condition(&ZooKeeperConfigStore::HasWork, this), absl::Milliseconds(200));
      if (stop_) return;
      node_event = std::exchange(node_event_, false);
      session_event = std::exchange(session_event_, false);
    }
    int state;
    {
      absl::ReaderMutexLock h(&handle_mu_);
      state = zoo_state(zh_);
    }
    if (state == ZOO_EXPIRED_SESSION_STATE || state == ZOO_AUTH_FAILED_STATE) {
      Renew();
      rearm = force = true;
      was_connected = false;
      continue;
    }
    const bool connected = state == ZOO_CONNECTED_STATE;
    if (connected != was_connected) {
      if (connected) {
        spdlog::info("ZooKeeper {} at {}: connected", path_, options_.hosts);
      } else {
        spdlog::warn("ZooKeeper {} at {}: connection lost; serving the definitions last read until it is back", path_,
                     options_.hosts);
      }
      was_connected = connected;
      rearm = rearm || connected;
    }
    if (!connected) continue;
    if (session_event) rearm = true;  // a quick reconnect between two polls
    if (!(node_event || rearm || force)) continue;
    bool changed = false;
    absl::Status s = ArmAndCheck(&changed);
    if (!s.ok()) {
      spdlog::debug("{}", s.ToString());
      rearm = true;  // retried on the next round
      continue;
    }
    rearm = false;
    if (changed || force) {
      force = false;
      Notify();
    }
  }
}

absl::Status ZooKeeperConfigStore::ExpireSessionForTest() {
  clientid_t id;
  {
    absl::ReaderMutexLock h(&handle_mu_);
    if (zoo_state(zh_) != ZOO_CONNECTED_STATE) return Unavailable("not connected; cannot expire", ZCONNECTIONLOSS);
    id = *zoo_client_id(zh_);
  }
  // A second handle on the same session, closed: the server ends the session for both.
  zhandle_t* other = zookeeper_init2(options_.hosts.c_str(), &IgnoreEvents,
                                     static_cast<int>(options_.session_timeout_ms), &id, nullptr, 0, &ClientLog);
  if (other == nullptr) return absl::InternalError("zookeeper_init failed");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (zoo_state(other) != ZOO_CONNECTED_STATE && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool ok = zoo_state(other) == ZOO_CONNECTED_STATE;
  zookeeper_close(other);
  return ok ? absl::OkStatus() : absl::UnavailableError("could not attach to the session to expire it");
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConfigStore>> NewZooKeeperConfigStore(const ZooKeeperOptions& options,
                                                                     const std::string& ns) {
  ASSIGN_OR_RETURN(auto store, ZooKeeperConfigStore::Open(options, ns));
  return std::unique_ptr<ConfigStore>(std::move(store));
}

absl::Status ExpireZooKeeperSessionForTest(ConfigStore* store) {
  auto* zk = dynamic_cast<ZooKeeperConfigStore*>(store);
  if (zk == nullptr) return absl::InvalidArgumentError("not a ZooKeeper config store");
  return zk->ExpireSessionForTest();
}

}  // namespace kosh::storage
