// Fuzz target: what a server sends the guard, a serialized StepBatch, fed to
// one stream's sessions (fallback hazard, default controller). Every batch
// gets directives or is ignored; nothing crashes. The input is also cut into
// two batches so sessions carry state between them.
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>

#include "guard_sidecar/guard_service.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Invalid UTF-8 in a string field fails the parse; protobuf's log line for it is noise here.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  static const kvguard::guard::FallbackHazard hazard;
  static kvguard::guard::GuardEngine engine(hazard, {});
  kvguard::guard::StreamSessions sessions(engine);
  const size_t half = size / 2;
  for (auto [p, n] : {std::pair{data, half}, std::pair{data + half, size - half}}) {
    kvguard::v1::StepBatch batch;
    if (!batch.ParseFromArray(p, static_cast<int>(n))) continue;
    (void)sessions.Process(batch);
  }
  return 0;
}
