#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace kosh::testing {

// A small tmpfs mounted at `path` (created if missing) for disk-full tests. Mounting needs root
// (CAP_SYS_ADMIN): tests check mounted() and skip where it is not permitted. On destruction,
// `before_unmount` runs first (close whatever has files open there), then the tmpfs is unmounted
// (lazily if still busy). A test process killed before that leaves the tmpfs mounted: unmount it
// by hand (`umount PATH`); it holds at most `bytes` of memory.
class SmallTmpfs {
 public:
  SmallTmpfs(std::string path, uint64_t bytes, std::function<void()> before_unmount = nullptr);
  ~SmallTmpfs();
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }  // why mounting failed

  // Fills the filesystem with one file so that only `keep` bytes stay free; Release() deletes it.
  // Returns false (with error()) if the filler could not be written.
  bool FillLeaving(uint64_t keep);
  void Release();
  // Changes the size limit of the mounted tmpfs (remount); false with error() on failure.
  bool Resize(uint64_t bytes);

 private:
  std::string path_;
  std::function<void()> before_unmount_;
  bool mounted_ = false;
  std::string error_;
};

}  // namespace kosh::testing
