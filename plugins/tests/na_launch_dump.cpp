// Prints the kernel launch plan (na_launch.h) for requests read from stdin, so that
// tests/test_native_launch.py can check it against each architecture's shared-memory limit and the
// compiled kernels' static shared memory. One request per line:
//   C dtype head_dim max_smem                  -> "path tile dynamic_bytes static_bytes" of the generic kernel
//   S elem_bytes tile                          -> "static_bytes" of that kernel instantiation
//   P dtype head_dim rank k0 k1 k2 has_rpb cc_major max_smem aligned -> "path" of that call (na_path)
//   G batch heads                              -> "b0 batches h0 heads" per grid chunk, one line
#include <iostream>
#include <sstream>
#include <string>

#include "na_launch.h"

namespace {

size_t static_bytes(int elem, int tile) {
    switch (tile * 10 + elem) {
        case 644: return attnx::SmemPlan<4, 64>::static_bytes();
        case 324: return attnx::SmemPlan<4, 32>::static_bytes();
        case 164: return attnx::SmemPlan<4, 16>::static_bytes();
        case 642: return attnx::SmemPlan<2, 64>::static_bytes();
        case 322: return attnx::SmemPlan<2, 32>::static_bytes();
        case 162: return attnx::SmemPlan<2, 16>::static_bytes();
        default: return 0;
    }
}

}  // namespace

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        char kind = 0;
        in >> kind;
        std::ostringstream out;
        if (kind == 'C') {
            int dtype, dim;
            size_t max_smem;
            in >> dtype >> dim >> max_smem;
            const attnx::LaunchChoice c = attnx::choose_launch(dtype, dim, max_smem);
            out << static_cast<int>(c.path) << ' ' << c.tile << ' ' << c.dynamic_smem << ' ' << c.static_smem;
        } else if (kind == 'S') {
            int elem, tile;
            in >> elem >> tile;
            out << static_bytes(elem, tile);
        } else if (kind == 'P') {
            attnx_na_params p{};
            int major, aligned;
            size_t max_smem;
            in >> p.dtype >> p.head_dim >> p.rank;
            for (int a = 0; a < 3; ++a) in >> p.kernel_size[a];
            in >> p.has_rpb >> major >> max_smem >> aligned;
            out << static_cast<int>(attnx::na_path(p, major, max_smem, aligned != 0));
        } else if (kind == 'G') {
            int batch, heads;
            in >> batch >> heads;
            attnx::for_each_grid_chunk(batch, heads, [&](int b0, int nb, int h0, int nh) {
                out << b0 << ' ' << nb << ' ' << h0 << ' ' << nh << ' ';
            });
        } else {
            std::cerr << "unknown request: " << line << '\n';
            return 2;
        }
        std::cout << out.str() << '\n';
    }
    return 0;
}
