// The integration tests' process helpers live in common/child_process.h.
#pragma once

#include "common/child_process.h"

namespace kvguard::testing {
using kvguard::ChildProcess;
using kvguard::FreePort;
using kvguard::HttpGet;
using kvguard::MetricValue;
}  // namespace kvguard::testing
