// Answers requests about PARO's host + device rules (kernels/paro_rules.h) read from stdin, one a line, so that
// tests/test_native_paro_rules.py checks them against the registry and the simulator:
//   F                      -> the P tile-max floor, as %a (exact)
//   S tile_max qmax        -> p_tile_scale(tile_max, qmax), as %a (tile_max read with strtof, so hex floats work)
//   P seq index...         -> permuted(perm, n, seq) for each n of the given perm row
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "paro_rules.h"

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string kind;
        in >> kind;
        char text[64];
        if (kind == "F") {
            std::snprintf(text, sizeof text, "%a", static_cast<double>(attnx::paro::kPTileMaxFloor));
            std::cout << text << '\n';
        } else if (kind == "S") {
            std::string tile_max, qmax;
            in >> tile_max >> qmax;
            const float scale = attnx::paro::p_tile_scale(std::strtof(tile_max.c_str(), nullptr), std::strtof(qmax.c_str(), nullptr));
            std::snprintf(text, sizeof text, "%a", static_cast<double>(scale));
            std::cout << text << '\n';
        } else if (kind == "P") {
            int seq = 0;
            in >> seq;
            std::vector<int32_t> perm;
            for (int32_t x; in >> x;) perm.push_back(x);
            for (int n = 0; n < static_cast<int>(perm.size()); ++n) std::cout << attnx::paro::permuted(perm.data(), n, seq) << ' ';
            std::cout << '\n';
        } else {
            std::cerr << "unknown request: " << line << '\n';
            return 2;
        }
    }
    return 0;
}
