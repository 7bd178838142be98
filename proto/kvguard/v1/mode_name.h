// File: proto/kvguard/v1/mode_name.h
//
// The guard modes' lower-case names ("normal", "alert", "safe", "recovery"):
// metric labels, GenerationComplete.mode_steps keys, client output. One
// definition for the server, the guard and the client.
#pragma once

#include <string_view>

#include "kvguard/v1/common.pb.h"

namespace kvguard::v1 {

inline std::string_view ModeName(Mode mode) {
  switch (mode) {
    case MODE_ALERT:
      return "alert";
    case MODE_SAFE:
      return "safe";
    case MODE_RECOVERY:
      return "recovery";
    default:
      return "normal";
  }
}

}  // namespace kvguard::v1
