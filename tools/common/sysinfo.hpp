// Facts recorded next to every measurement: machine, date and source revision.
#pragma once

#include <string>

namespace blasst::tools {

// "cpu:<model name from /proc/cpuinfo>" (or "cpu:unknown"), commas removed for CSV.
std::string cpu_label();
// Today's date in UTC, ISO 8601 (YYYY-MM-DD).
std::string utc_date();
// `git rev-parse --short HEAD` of the source tree the tools were built from, or "unknown".
std::string source_commit();
// Hardware threads available to this process.
int hardware_threads();

}  // namespace blasst::tools
