// Prints the shared index math (na_index.h) for configurations read from stdin, so that
// tests/test_native_index.py can compare it with the Python reference formula. One request per line:
//   W n k s d causal        -> "b e" per query i (window of i, group coordinates), one line
//   T n k s d causal tile   -> "b e" per (group, tile) in order, one line
//   S n0 n1 n2 d0 d1 d2 tokens -> the chosen tile shape, one line
//   I n k s d causal tile   -> per (group, query tile, kv tile of its range) "kv_first interior", one line
//   M t0 t1 t2 o0 o1 o2 e0 e1 e2 b0 b1 b2 f0 f1 f2 -> slot_keep_mask(tile t, origin o, kv_end e, q_begin b,
//                              q_end f) as an unsigned decimal, one line
#include <iostream>
#include <sstream>
#include <string>

#include "na_index.h"

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        char kind = 0;
        in >> kind;
        std::ostringstream out;
        if (kind == 'W' || kind == 'T') {
            int n, k, s, d, causal, tile = 1;
            in >> n >> k >> s >> d >> causal;
            if (kind == 'T') in >> tile;
            for (int g = 0; g < d && g < n; ++g) {
                const int n_g = attnx::group_length(n, d, g);
                if (kind == 'W') {
                    for (int ip = 0; ip < n_g; ++ip) {
                        const attnx::Range r = attnx::window(ip, n_g, k, s, causal != 0);
                        out << r.begin << ' ' << r.end << ' ';
                    }
                } else {
                    for (int first = 0; first < n_g; first += tile) {
                        const int last = first + tile < n_g ? first + tile - 1 : n_g - 1;
                        const attnx::Range r = attnx::tile_kv_range(first, last, n_g, k, s, causal != 0);
                        out << r.begin << ' ' << r.end << ' ';
                    }
                }
            }
        } else if (kind == 'I') {
            int n, k, s, d, causal, tile;
            in >> n >> k >> s >> d >> causal >> tile;
            for (int g = 0; g < d && g < n; ++g) {
                const int n_g = attnx::group_length(n, d, g);
                for (int first = 0; first < n_g; first += tile) {
                    const int last = first + tile < n_g ? first + tile - 1 : n_g - 1;
                    const attnx::Range r = attnx::tile_kv_range(first, last, n_g, k, s, causal != 0);
                    for (int kv = r.begin; kv < r.end; kv += tile)
                        out << kv << ' ' << attnx::kv_tile_interior(first, last, kv, tile, r.end, n_g, k, s, causal != 0) << ' ';
                }
            }
        } else if (kind == 'M') {
            int v[5][3];
            for (auto& row : v)
                for (int& x : row) in >> x;
            out << attnx::slot_keep_mask(v[0], v[1], v[2], v[3], v[4]);
        } else if (kind == 'S') {
            int n[3], d[3], tokens, shape[3];
            in >> n[0] >> n[1] >> n[2] >> d[0] >> d[1] >> d[2] >> tokens;
            attnx::choose_tile_shape(3, n, d, tokens, shape);
            out << shape[0] << ' ' << shape[1] << ' ' << shape[2];
        } else {
            std::cerr << "unknown request: " << line << '\n';
            return 2;
        }
        std::cout << out.str() << '\n';
    }
    return 0;
}
