// File: common/status_macros.h
//
// Status propagation macros. Debian bookworm's Abseil (20220623) ships neither
// ASSIGN_OR_RETURN nor RETURN_IF_ERROR, so kvguard keeps its own two.
//
//   absl::StatusOr<Config> LoadConfig(const std::string& path) {
//     KVG_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
//     KVG_RETURN_IF_ERROR(Validate(text));
//     ...
//   }
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVG_STATUS_CONCAT_INNER_(a, b) a##b
#define KVG_STATUS_CONCAT_(a, b) KVG_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK absl::Status.
#define KVG_RETURN_IF_ERROR(expr)                         \
  do {                                                    \
    const ::absl::Status kvg_status_ = (expr);            \
    if (!kvg_status_.ok()) return kvg_status_;            \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else
// moves the value into `lhs` (which may be a declaration).
#define KVG_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVG_ASSIGN_OR_RETURN_IMPL_(KVG_STATUS_CONCAT_(kvg_statusor_, __LINE__), lhs, rexpr)

#define KVG_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
