// Command-line parsing shared by the qsearch binaries (Boost.Program_options): --help
// prints the options and exits 0; a bad option prints the error and the options, exit 2.
#ifndef QSEARCH_COMMON_CLI_H_
#define QSEARCH_COMMON_CLI_H_

#include <iostream>
#include <optional>
#include <string>

#include <boost/program_options.hpp>

namespace qsearch {

// std::nullopt: go on; a value: exit with it.
inline std::optional<int> ParseCommandLine(int argc, char** argv,
                                           const boost::program_options::options_description& desc,
                                           boost::program_options::variables_map& vm, const std::string& program) {
  namespace po = boost::program_options;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << program << ": " << e.what() << "\n" << desc << "\n";
    return 2;
  }
  return std::nullopt;
}

}  // namespace qsearch

#endif  // QSEARCH_COMMON_CLI_H_
