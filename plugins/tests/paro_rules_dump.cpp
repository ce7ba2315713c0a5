// Answers requests about PARO's host + device rules (kernels/paro_rules.h) read from stdin, one a line, so that
// tests/test_native_paro_rules.py checks them against the registry and the simulator:
//   F                      -> the P tile-max floor, as %a (exact)
//   S tile_max qmax        -> p_tile_scale(tile_max, qmax), as %a (tile_max read with strtof, so hex floats work)
//   P seq index...         -> permuted(perm, n, seq) for each n of the given perm row
//   Q scale qmax p...      -> for each p: quantize_p_fast (with p_tile_reciprocal(scale)), its near flag and
//                             quantize_p_exact, as "fast near exact" triples (floats as %a)
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
        } else if (kind == "Q") {
            std::string scale_text, qmax_text;
            in >> scale_text >> qmax_text;
            const float scale = std::strtof(scale_text.c_str(), nullptr), qmax = std::strtof(qmax_text.c_str(), nullptr);
            const float reciprocal = attnx::paro::p_tile_reciprocal(scale);
            for (std::string p_text; in >> p_text;) {
                const float p = std::strtof(p_text.c_str(), nullptr);
                bool near = false;
                const float fast = attnx::paro::quantize_p_fast(p, reciprocal, qmax, near);
                const float exact = attnx::paro::quantize_p_exact(p, scale, qmax);
                std::snprintf(text, sizeof text, "%a %d %a ", static_cast<double>(fast), near ? 1 : 0, static_cast<double>(exact));
                std::cout << text;
            }
            std::cout << '\n';
        } else {
            std::cerr << "unknown request: " << line << '\n';
            return 2;
        }
    }
    return 0;
}
