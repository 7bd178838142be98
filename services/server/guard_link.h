// File: services/server/guard_link.h
//
// The scheduler's view of the guard sidecar: send one StepBatch per decode
// step, then wait (up to a deadline) for the DirectiveBatch answering a given
// batch. A missed deadline or a broken link returns nullopt and the scheduler
// applies its fail-safe policy; the link never fails a request.
//
//   link->Send(batch);                                  // non-blocking
//   auto directives = link->Await(batch.batch_id(), now + 50ms);
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

#include "kvguard/v1/guard.pb.h"

namespace kvguard::server {

class GuardLink {
 public:
  virtual ~GuardLink() = default;
  // Queues the batch for the guard (taken by value: the caller moves its
  // pending batch in rather than copying every report); dropped (and counted)
  // while disconnected.
  virtual void Send(v1::StepBatch batch) = 0;
  // The answer to `batch_id`, or nullopt if it has not arrived by `deadline`.
  virtual std::optional<v1::DirectiveBatch> Await(
      uint64_t batch_id, std::chrono::steady_clock::time_point deadline) = 0;
  [[nodiscard]] virtual bool connected() const = 0;
};

}  // namespace kvguard::server
