// Helpers that keep absl::Status call sites flat.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KOSH_CONCAT_INNER_(a, b) a##b
#define KOSH_CONCAT_(a, b) KOSH_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the current function if it is not OK.
#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    ::absl::Status kosh_status_ = (expr);       \
    if (!kosh_status_.ok()) return kosh_status_; \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise moves the value
// into `lhs`, which may be a declaration (`auto x`) or an existing variable.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  KOSH_ASSIGN_OR_RETURN_IMPL_(KOSH_CONCAT_(kosh_statusor_, __LINE__), lhs, rexpr)
#define KOSH_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (!statusor.ok()) return statusor.status();           \
  lhs = std::move(statusor).value()
