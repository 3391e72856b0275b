/*
 * patchscope's text-write tracer: a TCG plugin for QEMU's system emulation.
 *
 * For every store the guest makes, once the kernel runs at its link-time
 * addresses, it checks where the store lands: a virtual address inside the
 * kernel's text ranges, or a physical page known to hold kernel text (learned
 * from the first store through the text's own addresses). Those stores are
 * logged with the value written (read back from the guest RAM file QEMU shares
 * with us), the storing instruction's address and both addresses, so that a
 * write through any alias (text_poke's temporary mapping, the direct map, the
 * hypervisor's own mappings) is seen. The entries and returns of a set of
 * functions are followed, per CPU: each store carries the innermost stage
 * function it was made in, and whether it was made inside text_poke_early()
 * or __text_poke(); the entries and returns of the window boundaries
 * (start_kernel, alternative_instructions) are logged.
 *
 * Built by patchscope with the host's gcc (framework/vm/plugin.py); the few
 * API functions used are declared below from QEMU's documented plugin API
 * (include/qemu/qemu-plugin.h, API version 1, QEMU 7.x).
 *
 * Arguments (-plugin textwrites.so,arg=...):
 *   out=PATH        the log (records below); created, grown sparsely, cut to size at exit
 *   ram=PATH        the guest RAM file (memory-backend-file, share=on)
 *   ramsize=N       its size in bytes; lowmem=N: how much of it QEMU maps below 4 GiB
 *   vtext=A-B       a virtual text range (hex, several allowed)
 *   watch=ID:A:B:K  a function [A, B) whose entries and returns are followed (ID decimal); K: s a stage
 *                   function, w a writer, p __text_poke, e text_poke_early, b a window boundary (logged)
 *   arm=A-B         logging starts at the first instruction executed in [A, B)
 *   free=A:B-C      when the instruction at A runs, [B, C) stops being text (free_initmem)
 *   thunk=A         the return thunk: a jump to it from a watched function is a return
 */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ---- the plugin API, as documented for version 1 ---------------------------------------- */
#define EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_plugin_hwaddr;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb)(unsigned int vcpu, void *udata);
typedef void (*mem_cb)(unsigned int vcpu, qemu_plugin_meminfo_t, uint64_t vaddr, void *udata);
typedef void (*exit_cb)(qemu_plugin_id_t, void *udata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, udata_cb, enum qemu_plugin_cb_flags, void *);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *, mem_cb, enum qemu_plugin_cb_flags,
                                      enum qemu_plugin_mem_rw, void *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, exit_cb, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t);
struct qemu_plugin_hwaddr *qemu_plugin_get_hwaddr(qemu_plugin_meminfo_t, uint64_t vaddr);
bool qemu_plugin_hwaddr_is_io(const struct qemu_plugin_hwaddr *);
uint64_t qemu_plugin_hwaddr_phys_addr(const struct qemu_plugin_hwaddr *);
void qemu_plugin_outs(const char *);

#define API_VERSION 1
EXPORT int qemu_plugin_version = API_VERSION;

/* ---- the log ------------------------------------------------------------------------------ */
/* A header, then fixed 56-byte records; a record of kind 0 (a file cut short) ends the log. */
#define MAGIC "PSTW0002"
enum { REC_STORE = 1, REC_ENTER = 2, REC_RETURN = 3, REC_ARM = 4, REC_LEARN = 5, REC_FREE = 6, REC_DROPPED = 7 };
struct record {
    uint8_t kind;
    uint8_t size;       /* stores: bytes written (1..16) */
    uint16_t id;        /* enter/return: the watched function; stores: the innermost stage function, or 0 */
    uint16_t vcpu;
    uint16_t inside;    /* stores: INSIDE_* flags, and above them the CPU's count of writer calls (mod 2^14) */
    uint64_t vaddr;     /* stores: the address stored to; enter/return/arm: the instruction; learn: text page */
    uint64_t paddr;     /* stores: the physical address; learn: its physical page */
    uint64_t pc;        /* stores: the storing instruction */
    uint8_t value[16];  /* stores: the bytes written, read back from guest RAM */
    uint64_t ns;        /* CLOCK_MONOTONIC when logged */
};
_Static_assert(sizeof(struct record) == 56, "record layout");

#define LOG_MAX (1ull << 34)        /* a sparse file: only what is written takes space */
#define MAX_RANGES 32
#define MAX_WATCH 4096

struct range { uint64_t lo, hi; };
struct watch { uint64_t lo, hi; uint16_t id; char kind; };
enum { INSIDE_TEXT_POKE = 1, INSIDE_TEXT_POKE_EARLY = 2 };
#define MAX_VCPUS 64
#define MAX_DEPTH 64
/* Each CPU's watched functions entered and not yet returned from, outermost first. */
static struct watch *frames[MAX_VCPUS][MAX_DEPTH];
static int depth[MAX_VCPUS];
static uint16_t writer_calls[MAX_VCPUS];   /* entries of text_poke_early and __text_poke: one write each */

static struct range vtext[MAX_RANGES], arm_range;
static int n_vtext;
static struct watch watches[MAX_WATCH];
static int n_watch;
static volatile int armed;
static uint8_t *log_map;
static uint64_t log_used;           /* bytes, header included */
static int log_fd = -1;
static uint64_t dropped;
static const char *ram_path;
static uint8_t *ram;
static uint64_t ram_size, lowmem = UINT64_MAX;
static uint8_t *text_pages;         /* one byte a physical page: 1 = kernel text */
static uint64_t n_pages;
static uint64_t return_thunk;
static int learned, freed;
static uint64_t text_delta;
static struct range free_range;
static uint64_t free_at;

static struct record *next_record(void)
{
    uint64_t at = __atomic_fetch_add(&log_used, sizeof(struct record), __ATOMIC_RELAXED);
    if (at + sizeof(struct record) > LOG_MAX) {
        __atomic_fetch_add(&dropped, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    struct record *r = (struct record *)(log_map + at);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r->ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    return r;
}

static bool in_ranges(const struct range *r, int n, uint64_t a)
{
    for (int i = 0; i < n; i++)
        if (a >= r[i].lo && a < r[i].hi)
            return true;
    return false;
}

static bool is_text_page(uint64_t pa)
{
    uint64_t page = pa >> 12;
    return page < n_pages && text_pages[page];
}

/* Guest physical address -> offset in the RAM file (the PC machine maps RAM above lowmem at 4 GiB). */
static int64_t ram_offset(uint64_t pa)
{
    if (pa < lowmem)
        return pa < ram_size ? (int64_t)pa : -1;
    if (pa >= (1ull << 32) && pa - (1ull << 32) + lowmem < ram_size)
        return (int64_t)(pa - (1ull << 32) + lowmem);
    return -1;
}

static void map_ram(void)
{
    int fd = open(ram_path, O_RDONLY);
    if (fd < 0)
        return;
    void *p = mmap(NULL, ram_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED)
        ram = p;
}

static void log_marker(uint8_t kind, uint16_t id, uint64_t pc, unsigned vcpu)
{
    struct record *r = next_record();
    if (r) {
        r->id = id;
        r->vaddr = pc;
        r->vcpu = vcpu;
        __atomic_store_n(&r->kind, kind, __ATOMIC_RELEASE);
    }
}

static void mark_page(uint64_t pa)
{
    if ((pa >> 12) < n_pages)
        text_pages[pa >> 12] = 1;
}

/*
 * A store through the text's own addresses tells where one text page is in guest physical
 * memory. The first one places all of the text: a kernel image is loaded physically contiguous
 * (natively by the decompressor, under Xen as dom0's first pages), so every text range is marked
 * at the same offset. A later page found elsewhere is marked too, and logged as not linear.
 */
static void learn(uint64_t vaddr, uint64_t pa, unsigned vcpu)
{
    uint64_t page = pa >> 12;
    if (page >= n_pages || text_pages[page])
        return;
    bool first = !learned;
    if (first) {
        learned = 1;
        text_delta = (pa & ~0xfffull) - (vaddr & ~0xfffull);
        for (int i = 0; i < n_vtext; i++)
            for (uint64_t a = vtext[i].lo & ~0xfffull; a < vtext[i].hi; a += 4096)
                mark_page(a + text_delta);
    }
    text_pages[page] = 1;
    struct record *r = next_record();
    if (r) {
        r->vaddr = vaddr & ~0xfffull;
        r->paddr = pa & ~0xfffull;
        r->id = first ? 1 : 0;          /* 1: the whole text placed at this offset; 0: one page, elsewhere */
        r->vcpu = vcpu;
        __atomic_store_n(&r->kind, REC_LEARN, __ATOMIC_RELEASE);
    }
}

/* The init text is freed (free_initmem): its pages go back to the page allocator and are not text. */
static void on_free(unsigned int vcpu, void *udata)
{
    if (!armed || !learned || freed)
        return;
    freed = 1;
    for (uint64_t a = free_range.lo & ~0xfffull; a < free_range.hi; a += 4096) {
        uint64_t pa = a + text_delta;
        if ((pa >> 12) < n_pages)
            text_pages[pa >> 12] = 0;
    }
    log_marker(REC_FREE, 0, (uint64_t)(uintptr_t)udata, vcpu);
}

static void on_store(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    /* QEMU 7.2 calls a write callback for loads too: the access's own kind decides */
    if (!armed || !qemu_plugin_mem_is_store(info))
        return;
    bool virt = in_ranges(vtext, n_vtext, vaddr);
    struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
    if (!hw || qemu_plugin_hwaddr_is_io(hw))
        return;
    uint64_t pa = qemu_plugin_hwaddr_phys_addr(hw);
    if (virt)
        learn(vaddr, pa, vcpu);
    else if (!is_text_page(pa))
        return;
    unsigned size = 1u << qemu_plugin_mem_size_shift(info);
    struct record *r = next_record();
    if (!r)
        return;
    r->size = size > 16 ? 16 : size;
    r->vcpu = vcpu;
    r->vaddr = vaddr;
    r->paddr = pa;
    r->pc = (uint64_t)(uintptr_t)udata;
    if (vcpu < MAX_VCPUS) {
        r->inside = (uint16_t)(writer_calls[vcpu] << 2);
        for (int i = depth[vcpu] - 1; i >= 0; i--) {
            struct watch *f = frames[vcpu][i];
            if (f->kind == 's' && !r->id)
                r->id = f->id;
            else if (f->kind == 'p')
                r->inside |= INSIDE_TEXT_POKE;
            else if (f->kind == 'e')
                r->inside |= INSIDE_TEXT_POKE_EARLY;
        }
    }
    if (!ram)
        map_ram();
    int64_t off = ram_offset(pa);
    if (ram && off >= 0 && (uint64_t)off + r->size <= ram_size)
        memcpy(r->value, ram + off, r->size);
    else
        r->size |= 0x80;        /* no value: the reader reports it */
    __atomic_store_n(&r->kind, REC_STORE, __ATOMIC_RELEASE);
}

/* The frames from w's (innermost) frame on end: a return, or w entered again (its frame ended unseen, as a
 * tail call's does). */
static void unwind_to(unsigned int vcpu, struct watch *w)
{
    for (int i = depth[vcpu] - 1; i >= 0; i--)
        if (frames[vcpu][i] == w) {
            depth[vcpu] = i;
            return;
        }
}

static void on_enter(unsigned int vcpu, void *udata)
{
    struct watch *w = udata;
    if (!armed)
        return;
    if (w->kind == 'b') {
        log_marker(REC_ENTER, w->id, w->lo, vcpu);
        return;
    }
    if (vcpu >= MAX_VCPUS)
        return;
    unwind_to(vcpu, w);
    if (w->kind == 'p' || w->kind == 'e')
        writer_calls[vcpu]++;
    if (depth[vcpu] < MAX_DEPTH)
        frames[vcpu][depth[vcpu]++] = w;
}

struct ret_site { uint64_t pc; struct watch *w; };

static void on_return(unsigned int vcpu, void *udata)
{
    struct ret_site *s = udata;
    if (!armed)
        return;
    if (s->w->kind == 'b')
        log_marker(REC_RETURN, s->w->id, s->pc, vcpu);
    else if (vcpu < MAX_VCPUS)
        unwind_to(vcpu, s->w);
}

static void on_arm(unsigned int vcpu, void *udata)
{
    if (!armed) {
        log_marker(REC_ARM, 0, (uint64_t)(uintptr_t)udata, vcpu);
        __atomic_store_n(&armed, 1, __ATOMIC_RELEASE);
    }
}

static struct watch *watch_of(uint64_t pc)
{
    int lo = 0, hi = n_watch;   /* sorted by start, disjoint */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (pc < watches[mid].lo)
            hi = mid;
        else if (pc >= watches[mid].hi)
            lo = mid + 1;
        else
            return &watches[mid];
    }
    return NULL;
}

/* A return: ret, ret imm16, or a jump to the return thunk (thunk=). */
static bool is_return(const uint8_t *code, size_t len, uint64_t pc)
{
    if (len >= 1 && (code[0] == 0xc3 || code[0] == 0xc2))
        return true;
    if (len == 5 && code[0] == 0xe9 && return_thunk) {
        int32_t rel;
        memcpy(&rel, code + 1, 4);
        return pc + 5 + (int64_t)rel == return_thunk;
    }
    return false;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        qemu_plugin_register_vcpu_mem_cb(insn, on_store, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_W,
                                         (void *)(uintptr_t)pc);
        if (pc == free_at && free_at)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_free, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)pc);
        if (!armed && pc >= arm_range.lo && pc < arm_range.hi)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_arm, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)pc);
        struct watch *w = watch_of(pc);
        if (!w)
            continue;
        if (pc == w->lo)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_enter, QEMU_PLUGIN_CB_NO_REGS, w);
        else if (is_return(qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn), pc)) {
            struct ret_site *s = malloc(sizeof *s);    /* one a translation of a return: few, kept */
            if (!s)
                continue;
            s->pc = pc;
            s->w = w;
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_return, QEMU_PLUGIN_CB_NO_REGS, s);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *udata)
{
    uint64_t used = __atomic_load_n(&log_used, __ATOMIC_ACQUIRE);
    if (used > LOG_MAX)
        used = LOG_MAX;
    if (dropped) {
        char msg[128];
        snprintf(msg, sizeof msg, "textwrites: log full, %llu records dropped\n", (unsigned long long)dropped);
        qemu_plugin_outs(msg);
        struct record *r = (struct record *)(log_map + used - sizeof(struct record));
        memset(r, 0, sizeof *r);
        r->vaddr = dropped;
        r->kind = REC_DROPPED;
    }
    msync(log_map, used, MS_SYNC);
    munmap(log_map, LOG_MAX);
    if (ftruncate(log_fd, (off_t)used) != 0)
        qemu_plugin_outs("textwrites: cannot cut the log to size\n");
    close(log_fd);
}

static int cmp_watch(const void *a, const void *b)
{
    const struct watch *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int fail(const char *what, const char *arg)
{
    char msg[512];
    snprintf(msg, sizeof msg, "textwrites: %s: %s\n", what, arg);
    qemu_plugin_outs(msg);
    fputs(msg, stderr);
    return -1;
}

static bool parse_range(const char *s, struct range *r)
{
    char *end;
    r->lo = strtoull(s, &end, 16);
    if (*end != '-')
        return false;
    r->hi = strtoull(end + 1, &end, 16);
    return *end == '\0' && r->hi > r->lo;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (info->version.cur < API_VERSION || info->version.min > API_VERSION || !info->system_emulation)
        return fail("needs plugin API version 1 and system emulation", info->target_name);
    const char *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        struct range r;
        if (!strncmp(a, "out=", 4))
            out = a + 4;
        else if (!strncmp(a, "ram=", 4))
            ram_path = a + 4;
        else if (!strncmp(a, "ramsize=", 8))
            ram_size = strtoull(a + 8, NULL, 0);
        else if (!strncmp(a, "lowmem=", 7))
            lowmem = strtoull(a + 7, NULL, 0);
        else if (!strncmp(a, "vtext=", 6) && n_vtext < MAX_RANGES && parse_range(a + 6, &r))
            vtext[n_vtext++] = r;
        else if (!strncmp(a, "free=", 5)) {
            char *end;
            free_at = strtoull(a + 5, &end, 16);
            if (*end != ':' || !parse_range(end + 1, &free_range))
                return fail("bad free", a);
        } else if (!strncmp(a, "thunk=", 6))
            return_thunk = strtoull(a + 6, NULL, 16);
        else if (!strncmp(a, "arm=", 4) && parse_range(a + 4, &r))
            arm_range = r;
        else if (!strncmp(a, "watch=", 6) && n_watch < MAX_WATCH) {
            char *end;
            struct watch w;
            w.id = (uint16_t)strtoul(a + 6, &end, 10);
            if (*end != ':')
                return fail("bad watch", a);
            w.lo = strtoull(end + 1, &end, 16);
            if (*end != ':')
                return fail("bad watch", a);
            w.hi = strtoull(end + 1, &end, 16);
            if (*end != ':' || w.hi <= w.lo || !end[1] || end[2] || !strchr("swpeb", end[1]))
                return fail("bad watch", a);
            w.kind = end[1];
            watches[n_watch++] = w;
        } else
            return fail("unknown or bad argument", a);
    }
    if (!out || !ram_path || !ram_size || !n_vtext || !arm_range.hi)
        return fail("needs out=, ram=, ramsize=, vtext= and arm=", "");
    qsort(watches, n_watch, sizeof watches[0], cmp_watch);
    n_pages = ((lowmem < ram_size ? (1ull << 32) - lowmem : 0) + ram_size + 4095) >> 12;
    text_pages = calloc(n_pages, 1);
    if (!text_pages)
        return fail("out of memory", "text pages");
    log_fd = open(out, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (log_fd < 0)
        return fail(strerror(errno), out);
    if (ftruncate(log_fd, (off_t)LOG_MAX) != 0)
        return fail(strerror(errno), out);
    log_map = mmap(NULL, LOG_MAX, PROT_READ | PROT_WRITE, MAP_SHARED, log_fd, 0);
    if (log_map == MAP_FAILED)
        return fail(strerror(errno), out);
    memcpy(log_map, MAGIC, 8);
    log_used = sizeof(struct record);         /* the header takes one record's room */
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
