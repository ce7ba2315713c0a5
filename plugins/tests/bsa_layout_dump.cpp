// Prints block_layout.h's reading of one padded-ELL row for requests read from stdin, so that
// tests/test_native_block_layout.py can compare it with the simulator (attn_export.models.bsa_kernel_sim).
//   V block_kv seq_kv n_blocks count b0 b1 ...   -> key(v) for v in [0, slots + 3), then "|", then
//                                                   tile_masked(t) for every 64-slot tile, one line
//   D divisor n0 n1 ...                          -> FastDivisor(divisor).quotient(n) for each n, one line
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "block_layout.h"

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        char kind = 0;
        in >> kind;
        if (kind == 'D') {
            int divisor = 0;
            in >> divisor;
            const attnx::FastDivisor by(divisor);
            for (int n; in >> n;) std::cout << by.quotient(n) << ' ';
            std::cout << '\n';
            continue;
        }
        int block_kv, seq_kv, n_blocks, count;
        in >> block_kv >> seq_kv >> n_blocks >> count;
        if (kind != 'V') {
            std::cerr << "unknown request: " << line << '\n';
            return 2;
        }
        std::vector<int32_t> index(static_cast<size_t>(count));
        for (int& b : index) in >> b;
        const attnx::VirtualKeys keys{attnx::BlockRow{index.data(), count, n_blocks}, attnx::FastDivisor(block_kv),
                                      seq_kv};
        std::ostringstream out;
        for (int v = 0; v < keys.slots() + 3; ++v) out << keys.key(v) << ' ';
        out << '|';
        for (int t = 0; t < keys.tiles(64); ++t) out << ' ' << keys.tile_masked(t, 64);
        std::cout << out.str() << '\n';
    }
    return 0;
}
