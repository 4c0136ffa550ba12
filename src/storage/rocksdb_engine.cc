#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rocksdb/cache.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/merge_operator.h"
#include "rocksdb/statistics.h"
#include "rocksdb/table.h"
#include "storage/engine.h"
#include "storage/rocksdb_logger.h"

namespace kosh::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

class ExpiryFilter : public rocksdb::CompactionFilter {
 public:
  explicit ExpiryFilter(ExpiryFn fn) : fn_(std::move(fn)) {}
  bool Filter(int /*level*/, const rocksdb::Slice& /*key*/, const rocksdb::Slice& value,
              std::string* /*new_value*/, bool* /*value_changed*/) const override {
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    return fn_(absl::string_view(value.data(), value.size()), now);
  }
  const char* Name() const override { return "kosh.ExpiryFilter"; }

 private:
  ExpiryFn fn_;
};

class MergeAdapter : public rocksdb::MergeOperator {
 public:
  explicit MergeAdapter(MergeFn fn) : fn_(std::move(fn)) {}
  bool FullMergeV2(const MergeOperationInput& in, MergeOperationOutput* out) const override {
    std::vector<absl::string_view> ops;
    ops.reserve(in.operand_list.size());
    for (const auto& o : in.operand_list) ops.emplace_back(o.data(), o.size());
    absl::string_view existing;
    if (in.existing_value != nullptr) existing = absl::string_view(in.existing_value->data(), in.existing_value->size());
    return fn_(absl::string_view(in.key.data(), in.key.size()), in.existing_value ? &existing : nullptr, ops,
               &out->new_value);
  }
  bool PartialMergeMulti(const rocksdb::Slice& key, const std::deque<rocksdb::Slice>& operand_list,
                         std::string* new_value, rocksdb::Logger*) const override {
    std::vector<absl::string_view> ops;
    for (const auto& o : operand_list) ops.emplace_back(o.data(), o.size());
    return fn_(absl::string_view(key.data(), key.size()), nullptr, ops, new_value);
  }
  const char* Name() const override { return "kosh.MergeAdapter"; }

 private:
  MergeFn fn_;
};

class RocksDbEngine : public Engine {
 public:
  RocksDbEngine(RocksDbOptions options, std::unique_ptr<rocksdb::DB> db,
                std::vector<rocksdb::ColumnFamilyHandle*> handles,
                std::vector<std::unique_ptr<ExpiryFilter>> filters,
                std::shared_ptr<rocksdb::Statistics> stats, std::shared_ptr<rocksdb::Cache> cache)
      : options_(std::move(options)),
        filters_(std::move(filters)),
        stats_(std::move(stats)),
        cache_(std::move(cache)),
        handles_(std::move(handles)),
        db_(std::move(db)) {}

  ~RocksDbEngine() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  absl::Status Write(const WriteBatch& batch) override {
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops()) {
      rocksdb::Status s;
      switch (op.kind) {
        case WriteBatch::Op::kPut: s = wb.Put(handles_[op.ks], op.key, op.value); break;
        case WriteBatch::Op::kDelete: s = wb.Delete(handles_[op.ks], op.key); break;
        case WriteBatch::Op::kMerge: s = wb.Merge(handles_[op.ks], op.key, op.value); break;
      }
      if (!s.ok()) return FromRocks(s, "building write batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync_writes;
    return FromRocks(db_->Write(wo, &wb), "write");
  }

  absl::Status MultiGet(Keyspace ks, absl::Span<const absl::string_view> keys,
                        std::vector<std::optional<std::string>>* values) override {
    const size_t n = keys.size();
    std::vector<rocksdb::Slice> slices(n);
    for (size_t i = 0; i < n; ++i) slices[i] = rocksdb::Slice(keys[i].data(), keys[i].size());
    std::vector<rocksdb::PinnableSlice> out(n);
    std::vector<rocksdb::Status> statuses(n);
    db_->MultiGet(rocksdb::ReadOptions(), handles_[ks], n, slices.data(), out.data(),
                  statuses.data());
    values->assign(n, std::nullopt);
    for (size_t i = 0; i < n; ++i) {
      if (statuses[i].ok()) {
        (*values)[i].emplace(out[i].data(), out[i].size());
      } else if (!statuses[i].IsNotFound()) {
        return FromRocks(statuses[i], "multiget");
      }
    }
    return absl::OkStatus();
  }

  absl::Status Scan(Keyspace ks, absl::string_view prefix,
                    const std::function<bool(absl::string_view, absl::string_view)>& fn) override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[ks]));
    rocksdb::Slice p(prefix.data(), prefix.size());
    for (it->Seek(p); it->Valid() && it->key().starts_with(p); it->Next()) {
      if (!fn(absl::string_view(it->key().data(), it->key().size()),
              absl::string_view(it->value().data(), it->value().size()))) {
        break;
      }
    }
    return FromRocks(it->status(), "scan");
  }

  absl::Status CompactAll(Keyspace ks) override {
    rocksdb::CompactRangeOptions o;
    o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    return FromRocks(db_->CompactRange(o, handles_[ks], nullptr, nullptr), "compact");
  }

  std::vector<std::pair<std::string, double>> Stats() override {
    std::vector<std::pair<std::string, double>> out;
    for (size_t i = 0; i < handles_.size(); ++i) {
      uint64_t v = 0;
      std::string cf = handles_[i]->GetName();
      if (db_->GetIntProperty(handles_[i], "rocksdb.estimate-num-keys", &v)) {
        out.push_back({absl::StrCat("estimate_num_keys{keyspace=\"", cf, "\"}"), double(v)});
      }
      if (db_->GetIntProperty(handles_[i], "rocksdb.total-sst-files-size", &v)) {
        out.push_back({absl::StrCat("sst_bytes{keyspace=\"", cf, "\"}"), double(v)});
      }
      if (db_->GetIntProperty(handles_[i], "rocksdb.cur-size-all-mem-tables", &v)) {
        out.push_back({absl::StrCat("memtable_bytes{keyspace=\"", cf, "\"}"), double(v)});
      }
      if (db_->GetIntProperty(handles_[i], "rocksdb.estimate-pending-compaction-bytes", &v)) {
        out.push_back({absl::StrCat("pending_compaction_bytes{keyspace=\"", cf, "\"}"), double(v)});
      }
    }
    out.push_back({"block_cache_usage_bytes", double(cache_->GetUsage())});
    out.push_back({"block_cache_capacity_bytes", double(cache_->GetCapacity())});
    out.push_back({"block_cache_hits_total", double(stats_->getTickerCount(rocksdb::BLOCK_CACHE_HIT))});
    out.push_back({"block_cache_misses_total", double(stats_->getTickerCount(rocksdb::BLOCK_CACHE_MISS))});
    out.push_back({"bytes_written_total", double(stats_->getTickerCount(rocksdb::BYTES_WRITTEN))});
    out.push_back({"bytes_read_total", double(stats_->getTickerCount(rocksdb::BYTES_READ))});
    out.push_back({"wal_syncs_total", double(stats_->getTickerCount(rocksdb::WAL_FILE_SYNCED))});
    out.push_back({"compaction_dropped_keys_total",
                   double(stats_->getTickerCount(rocksdb::COMPACTION_KEY_DROP_USER))});
    return out;
  }

  absl::Status Flush() override {
    rocksdb::FlushOptions fo;
    fo.wait = true;
    return FromRocks(db_->Flush(fo, handles_), "flush");
  }

 private:
  RocksDbOptions options_;
  // Declared before db_ so that they outlive it (the DB references filters, stats and cache).
  std::vector<std::unique_ptr<ExpiryFilter>> filters_;
  std::shared_ptr<rocksdb::Statistics> stats_;
  std::shared_ptr<rocksdb::Cache> cache_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> OpenRocksDb(const RocksDbOptions& options,
                                                    std::vector<KeyspaceOptions> keyspaces) {
  auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  auto stats = rocksdb::CreateDBStatistics();
  stats->set_stats_level(rocksdb::StatsLevel::kExceptDetailedTimers);

  rocksdb::DBOptions dbo;
  dbo.create_if_missing = true;
  dbo.create_missing_column_families = true;
  dbo.max_background_jobs = options.background_jobs;
  dbo.statistics = stats;
  dbo.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  // Warnings and errors go to the process log, not to a LOG file: a full disk must fail writes,
  // not abort the process (see NewProcessLogger).
  dbo.info_log = NewProcessLogger(absl::StrCat("rocksdb ", options.path), rocksdb::InfoLogLevel::WARN_LEVEL);

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.block_size = 8 * 1024;
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;

  std::vector<std::unique_ptr<ExpiryFilter>> filters;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (size_t i = 0; i < keyspaces.size(); ++i) {
    rocksdb::ColumnFamilyOptions cfo;
    cfo.write_buffer_size = options.write_buffer_bytes;
    cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    cfo.compression = rocksdb::kLZ4Compression;
    cfo.bottommost_compression = rocksdb::kZSTD;
    cfo.level_compaction_dynamic_level_bytes = true;
    if (keyspaces[i].expired) {
      filters.push_back(std::make_unique<ExpiryFilter>(keyspaces[i].expired));
      cfo.compaction_filter = filters.back().get();
    }
    if (keyspaces[i].merge) cfo.merge_operator = std::make_shared<MergeAdapter>(keyspaces[i].merge);
    // The first keyspace is stored in RocksDB's default column family.
    cfs.emplace_back(i == 0 ? rocksdb::kDefaultColumnFamilyName : keyspaces[i].name, cfo);
  }
  if (cfs.empty()) cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());

  // Created here so that RocksDB does not log an error about the missing directory first.
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(dbo, options.path, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening RocksDB at ", options.path));
  return std::unique_ptr<Engine>(new RocksDbEngine(options, std::unique_ptr<rocksdb::DB>(raw),
                                                   std::move(handles), std::move(filters),
                                                   std::move(stats), std::move(cache)));
}

}  // namespace kosh::storage
