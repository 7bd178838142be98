// File: services/server/wire.h
//
// The scheduler's stream events as kvguard.v1 wire messages.
#pragma once

#include <string>

#include "kvguard/v1/generation.pb.h"
#include "services/server/stream_events.h"

namespace kvguard::server {

v1::GenerateResponse ToWire(const std::string& request_id, const TokenEvent& event);
v1::GenerateResponse ToWire(const std::string& request_id, const CompletionEvent& event);
v1::FinishReason ToWire(engine::FinishReason reason);

}  // namespace kvguard::server
