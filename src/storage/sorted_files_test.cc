#include "storage/sorted_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace kosh::storage {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kosh-sorted-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string Key(int i) { return absl::StrFormat("key%06d", i); }
std::string Val(int i) { return absl::StrFormat("value-%d-%s", i, std::string(i % 50, 'x')); }

// Writes keys [from, to) into one sorted file.
SortedFileInfo WriteFile(const std::string& path, int from, int to, Compression c = Compression::kLz4) {
  SortedFileOptions o;
  o.compression = c;
  auto w = SortedFileWriter::Open(path, o);
  EXPECT_TRUE(w.ok()) << w.status();
  for (int i = from; i < to; ++i) EXPECT_TRUE((*w)->Add(Key(i), Val(i)).ok());
  auto info = (*w)->Finish();
  EXPECT_TRUE(info.ok()) << info.status();
  return *info;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c(0, "", 0), 0u);
  // Incremental equals one shot, across the 8-byte fast path boundary.
  std::string s(1000, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7 + 3);
  uint32_t whole = Crc32c(0, s.data(), s.size());
  uint32_t part = Crc32c(Crc32c(0, s.data(), 333), s.data() + 333, s.size() - 333);
  EXPECT_EQ(whole, part);
}

TEST(SortedFileWriterTest, FinishReportsWhatDigestFileComputes) {
  TempDir dir;
  SortedFileInfo info = WriteFile(dir.File("a.sst"), 0, 1000);
  EXPECT_EQ(info.entries, 1000u);
  EXPECT_EQ(info.smallest_key, Key(0));
  EXPECT_EQ(info.largest_key, Key(999));
  EXPECT_EQ(info.bytes, fs::file_size(dir.File("a.sst")));
  auto d = DigestFile(dir.File("a.sst"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->bytes, info.bytes);
  EXPECT_EQ(d->crc32c, info.crc32c);
}

TEST(SortedFileWriterTest, RejectsUnorderedKeysAndEmptyFiles) {
  TempDir dir;
  auto w = SortedFileWriter::Open(dir.File("b.sst"), {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Add("b", "1").ok());
  EXPECT_EQ((*w)->Add("a", "2").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->Add("b", "2").code(), absl::StatusCode::kInvalidArgument);  // equal is not increasing

  auto empty = SortedFileWriter::Open(dir.File("c.sst"), {});
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE((*empty)->Finish().ok());
  empty->reset();
  EXPECT_FALSE(fs::exists(dir.File("c.sst"))) << "an unfinished file is removed";
}

TEST(DigestFileTest, MissingFileIsNotFoundAndCancelStops) {
  TempDir dir;
  EXPECT_EQ(DigestFile(dir.File("nope")).status().code(), absl::StatusCode::kNotFound);
  WriteFile(dir.File("a.sst"), 0, 100);
  EXPECT_EQ(DigestFile(dir.File("a.sst"), nullptr, [] { return true; }).status().code(),
            absl::StatusCode::kCancelled);
}

TEST(DigestFileTest, DirectAndCachedReadsAgreeAtEverySize) {
  TempDir dir;
  std::string shm_dir = "/dev/shm/kosh-digest-test-" + std::to_string(::getpid());
  fs::create_directories(shm_dir);
  for (size_t size : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{(1 << 20) + 123},
                      size_t{3 << 20}}) {
    std::string data(size, '\0');
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 131 + size) % 251);
    const uint32_t want = Crc32c(0, data.data(), data.size());
    // On the test directory's filesystem (O_DIRECT where supported) and on a tmpfs (cached fallback).
    for (const std::string& path : {dir.File("f.bin"), shm_dir + "/f.bin"}) {
      {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out << data;
      }
      IoThrottle slow(8 << 20);  // 512 KiB steps
      for (int variant = 0; variant < 7; ++variant) {
        if (variant == 2 || variant == 6) {
          // Drop the file's pages: the direct pass then reads what is not cached with O_DIRECT.
          int fd = ::open(path.c_str(), O_RDONLY);
          ASSERT_GE(fd, 0);
          ::fdatasync(fd);
          ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
          if (variant == 6) {
            // Then cache the second page and the last byte again: ranges from the cache and from
            // the disk alternate (a cached read stops short at the first page that is not cached).
            char b[4096];
            (void)!::pread(fd, b, sizeof b, 4096);
            if (size > 0) (void)!::pread(fd, b, 1, static_cast<off_t>(size - 1));
          }
          ::close(fd);
        }
        // 0, 2, 6: kDirect (cached, not cached, partly cached); 1, 3: kCached (3 throttled);
        // 4, 5: kDirectOnly (5 throttled).
        const ReadMode mode = variant == 4 || variant == 5 ? ReadMode::kDirectOnly
                              : variant % 2 == 0          ? ReadMode::kDirect
                                                          : ReadMode::kCached;
        auto d = DigestFile(path, variant == 3 || variant == 5 ? &slow : nullptr, nullptr, mode);
        ASSERT_TRUE(d.ok()) << path << " " << size << ": " << d.status();
        EXPECT_EQ(d->bytes, size) << path << " variant " << variant;
        EXPECT_EQ(d->crc32c, want) << path << " size " << size << " variant " << variant;
      }
    }
  }
  fs::remove_all(shm_dir);
}

TEST(IoThrottleTest, LimitsTheRate) {
  IoThrottle t(4 << 20);  // 4 MiB/s
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 8; ++i) t.Acquire(256 << 10);  // 2 MiB
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(s, 0.35);  // 2 MiB at 4 MiB/s is 0.5 s, less the initial burst of 0.4 MiB
  EXPECT_LT(s, 3.0);
  IoThrottle unlimited(0);
  start = std::chrono::steady_clock::now();
  unlimited.Acquire(1ull << 40);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 0.1);
}

TEST(SortedStoreTest, IngestsLinksAndServesLookups) {
  TempDir dir;
  WriteFile(dir.File("p0.sst"), 0, 500, Compression::kNone);
  WriteFile(dir.File("p1.sst"), 500, 1000, Compression::kZstd);
  // The store consumes the paths it is given: pass links, keep the originals.
  ASSERT_EQ(::link(dir.File("p0.sst").c_str(), dir.File("l0.sst").c_str()), 0);
  ASSERT_EQ(::link(dir.File("p1.sst").c_str(), dir.File("l1.sst").c_str()), 0);
  auto cache = BlockCache::New(8 << 20);
  {
    auto store = SortedStore::Create(dir.File("db"), {dir.File("l0.sst"), dir.File("l1.sst")}, {cache, 10});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_FALSE(fs::exists(dir.File("l0.sst")));
    EXPECT_TRUE(fs::exists(dir.File("p0.sst")));
    EXPECT_EQ(fs::hard_link_count(dir.File("p0.sst")), 2u) << "ingested by hard link, not copied";

    std::vector<std::string> keys = {Key(3), "missing", Key(999), Key(500), Key(1000)};
    std::vector<absl::string_view> views(keys.begin(), keys.end());
    std::map<size_t, std::string> found;
    ASSERT_TRUE((*store)->MultiGet(views, [&](size_t i, absl::string_view v) { found[i] = std::string(v); }).ok());
    EXPECT_EQ(found.size(), 3u);
    EXPECT_EQ(found[0], Val(3));
    EXPECT_EQ(found[2], Val(999));
    EXPECT_EQ(found[3], Val(500));

    auto files = (*store)->Files();
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[0].entries + files[1].entries, 1000u);
    EXPECT_EQ(files[0].smallest_key, Key(0));
    EXPECT_EQ(files[1].largest_key, Key(999));

    int n = 0;
    std::string last;
    ASSERT_TRUE((*store)->Scan([&](absl::string_view k, absl::string_view) {
      EXPECT_GT(std::string(k), last);
      last = std::string(k);
      return ++n < 10000;
    }).ok());
    EXPECT_EQ(n, 1000);
    EXPECT_GT(cache->usage(), 0u);
  }
  // Reopen after a restart.
  auto reopened = SortedStore::Open(dir.File("db"), {cache, 10});
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  std::vector<absl::string_view> one = {"key000042"};
  std::string v;
  ASSERT_TRUE((*reopened)->MultiGet(one, [&](size_t, absl::string_view x) { v = std::string(x); }).ok());
  EXPECT_EQ(v, Val(42));
  // Creating over an existing store is refused.
  EXPECT_EQ(SortedStore::Create(dir.File("db"), {}, {cache, 10}).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(SortedStoreTest, CorruptFileIsReportedNotServed) {
  TempDir dir;
  WriteFile(dir.File("p0.sst"), 0, 2000, Compression::kNone);
  // Overwrite bytes in a data block in the middle of the file. (Whole-file checksums are the
  // datasets loader's job; this checks that a block that goes bad later is an error, not a value.)
  {
    auto size = fs::file_size(dir.File("p0.sst"));
    std::fstream f(dir.File("p0.sst"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 3));
    f.write("XXXXXXXXXXXXXXXX", 16);
  }
  auto cache = BlockCache::New(8 << 20);
  auto store = SortedStore::Create(dir.File("db"), {dir.File("p0.sst")}, {cache, 10});
  if (!store.ok()) {
    EXPECT_NE(store.status().code(), absl::StatusCode::kOk);  // rejected at ingestion: fine too
    return;
  }
  // Block checksums catch it on read: an error, never a wrong value.
  bool any_error = false;
  for (int i = 0; i < 2000; i += 7) {
    std::string k = Key(i);
    std::vector<absl::string_view> views = {k};
    std::string got;
    absl::Status s = (*store)->MultiGet(views, [&](size_t, absl::string_view v) { got = std::string(v); });
    if (!s.ok()) {
      any_error = true;
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    } else {
      EXPECT_EQ(got, Val(i));
    }
  }
  EXPECT_TRUE(any_error);
}

}  // namespace
}  // namespace kosh::storage
