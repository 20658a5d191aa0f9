#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

struct Guard {
    std::string name;
    explicit Guard(const char *n) : name(n) {}
    ~Guard() { std::printf("leave %s\n", name.c_str()); }
};

__attribute__((noinline)) int parse(const char *s) {
    if (!s || !*s)
        throw std::invalid_argument("empty");
    return std::atoi(s);
}

__attribute__((noinline)) int sum(int argc, char **argv) {
    Guard g("sum");
    std::vector<int> v;
    for (int i = 1; i < argc; i++)
        v.push_back(parse(argv[i]));
    int t = 0;
    for (int x : v)
        t += x;
    if (__builtin_expect(t == 12345, 0)) {
        std::fprintf(stderr, "unlucky %d\n", t);
        std::abort();
    }
    return t;
}

int main(int argc, char **argv) {
    try {
        return sum(argc, argv) & 0x7f;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
}
