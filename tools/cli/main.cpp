// `blasst`: command-line front of the library.
//   blasst run    attention on .npy inputs, writing O, LSE and statistics
//   blasst demo   the embedded structured workload at several thresholds, vs dense
//   blasst bench  CPU benchmark (--engine cuda runs the GPU benchmarks, gpu_bench_forward.hpp)
#include <blasst/blasst.h>

#include <string>

#include "cli_common.hpp"
#include "gpu_bench_forward.hpp"

int main(int argc, char** argv) {
  if (blasst::cli::wants_gpu_bench(argc, argv)) return blasst::cli::forward_gpu_bench(argc, argv);
  if (argc >= 2 && argv[1][0] != '-') {
    const std::string cmd = argv[1];
    if (cmd != "run" && cmd != "demo" && cmd != "bench")
      return blasst::cli::report_error("unknown command '" + cmd + "' (expected run, demo or bench; see blasst --help)");
  }

  CLI::App app{std::string("blasst ") + blasst_version() +
               ": BLASST skip-softmax attention (FlashAttention forward that skips KV tiles whose scores "
               "cannot matter)"};
  app.name("blasst");
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(blasst_version()));
  app.get_formatter()->column_width(34);
  int exit_code = blasst::cli::kExitOk;
  blasst::cli::add_run_command(app, &exit_code);
  blasst::cli::add_demo_command(app, &exit_code);
  blasst::cli::add_bench_command(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RequiredError& e) {
    if (argc < 2) {
      std::fputs(app.help().c_str(), stderr);
      return blasst::cli::report_error("a command is required: run, demo or bench");
    }
    blasst::cli::report_error(e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return blasst::cli::kExitBadInput;
  } catch (const CLI::ParseError& e) {
    blasst::cli::report_error(e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return blasst::cli::kExitBadInput;
  }
  return exit_code;
}
