#include "small_tmpfs.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kosh::testing {

SmallTmpfs::SmallTmpfs(std::string path, uint64_t bytes, std::function<void()> before_unmount)
    : path_(std::move(path)), before_unmount_(std::move(before_unmount)) {
  std::error_code ec;
  std::filesystem::create_directories(path_, ec);
  const std::string opts = "size=" + std::to_string(bytes) + ",mode=0755";
  if (::mount("tmpfs", path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0) {
    mounted_ = true;
  } else {
    error_ = std::strerror(errno);
  }
}

SmallTmpfs::~SmallTmpfs() {
  if (!mounted_) return;
  if (before_unmount_) before_unmount_();
  if (::umount2(path_.c_str(), 0) != 0) ::umount2(path_.c_str(), MNT_DETACH);
}

bool SmallTmpfs::FillLeaving(uint64_t keep) {
  Release();
  struct statvfs sv;
  if (::statvfs(path_.c_str(), &sv) != 0) {
    error_ = std::string("statvfs: ") + std::strerror(errno);
    return false;
  }
  const uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  if (avail <= keep) return true;
  int fd = ::open((path_ + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    error_ = std::string("creating the filler: ") + std::strerror(errno);
    return false;
  }
  int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(avail - keep));
  ::close(fd);
  if (rc != 0) {
    error_ = std::string("posix_fallocate: ") + std::strerror(rc);
    return false;
  }
  return true;
}

bool SmallTmpfs::Resize(uint64_t bytes) {
  const std::string opts = "size=" + std::to_string(bytes) + ",mode=0755";
  if (::mount("tmpfs", path_.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    error_ = std::string("remount: ") + std::strerror(errno);
    return false;
  }
  return true;
}

void SmallTmpfs::Release() { ::unlink((path_ + "/filler").c_str()); }

}  // namespace kosh::testing
