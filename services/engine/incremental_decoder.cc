#include <string>

#include "services/engine/pretokenizer.h"
#include "services/engine/tokenizer.h"

namespace kvguard::engine {

// Decoding the pending bytes left to right and stopping at a trailing
// unfinished code point yields exactly the prefix of Decode(all ids): the
// lossy decoder's choices never depend on bytes after a lead byte's
// sequence, so the concatenated deltas equal the one-shot result.
std::string IncrementalDecoder::Push(int32_t id) {
  pending_ += tokenizer_->TokenBytes(id);
  std::string delta;
  size_t consumed = AppendUtf8Lossy(pending_, /*hold_incomplete=*/true, &delta);
  pending_.erase(0, consumed);
  return delta;
}

std::string IncrementalDecoder::Flush() {
  std::string rest;
  AppendUtf8Lossy(pending_, /*hold_incomplete=*/false, &rest);
  pending_.clear();
  return rest;
}

}  // namespace kvguard::engine
