/*
 * Compiled helpers for harvesting CHGCAR grids (dftflow._speedups).
 *
 * parse_doubles: whitespace-separated decimal numbers -> float64, exactly as
 *     Python's float() reads them (correctly rounded), without the GIL.
 *     Numbers with at most 19 significant digits and a decimal exponent
 *     |k| <= 22 are w * 10^k or w / 10^-k in one IEEE operation on exact
 *     operands (w < 2^53, 10^k exact), which is the correctly rounded result;
 *     all other numbers go to the C library's correctly rounded strtod in the
 *     "C" locale; nan, inf and infinity are read as float() reads them (the
 *     caller's finiteness check names them).  Any other token outside the
 *     grammar [+-]digits[.digits][E[+-]digits] stops the parse (Fortran's
 *     '0.1-100' or '1.0D+02', garbage), and the caller reads the block token
 *     by token.
 *
 * parse_fixed: the same for a grid block laid out as VASP writes it (lines of
 *     equal fields), reading each field on its own.
 *
 * shuffle_chunk: one HDF5 chunk of a float32 grid (C or Fortran order), byte-
 *     shuffled as HDF5's shuffle filter stores it, ready to deflate.
 *
 * Build: the hatch build hook (hatch_build.py) compiles this file; without it
 * dftflow falls back to pymatgen's parser (same values, slower, holds the GIL).
 */
#define PY_SSIZE_T_CLEAN
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GLIBC__) || defined(__APPLE__) || defined(__FreeBSD__)
#include <locale.h>
#if defined(__APPLE__) || defined(__FreeBSD__)
#include <xlocale.h>
#endif
#define HAVE_STRTOD_L 1
static locale_t c_locale = (locale_t)0;
#else
#define HAVE_STRTOD_L 0
#endif

static const double POW10[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static inline int is_digit(unsigned char c) { return (unsigned char)(c - '0') < 10; }

/* Eight ASCII digits at once (little-endian loads, GCC/Clang builtins), as in Lemire's fast_float. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define DFTFLOW_SWAR 1
static inline uint64_t load8(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline int eight_digits(uint64_t v) {
    return (((v & 0xF0F0F0F0F0F0F0F0u) | (((v + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) >> 4)) ==
            0x3333333333333333u);
}
static inline uint64_t parse_eight(uint64_t v) {
    const uint64_t mask = 0x000000FF000000FFu, mul1 = 0x000F424000000064u, mul2 = 0x0000271000000001u;
    v -= 0x3030303030303030u;
    v = (v * 10) + (v >> 8);
    return (((v & mask) * mul1) + (((v >> 16) & mask) * mul2)) >> 32;
}
#else
#define DFTFLOW_SWAR 0
#endif

enum { NUM_OK = 0, NUM_BAD = 1, NUM_SLOW = 2 };

/* 'nan', 'inf' or 'infinity' (any case) at q, as float() reads them; the caller checks finiteness. */
static int read_special(const unsigned char **pp, const unsigned char *q, const unsigned char *end, int negative,
                        double *value) {
    static const char *const words[3] = {"infinity", "inf", "nan"};
    for (int i = 0; i < 3; ++i) {
        size_t length = strlen(words[i]);
        if ((size_t)(end - q) < length) continue;
        size_t j = 0;
        while (j < length && (q[j] | 0x20) == (unsigned char)words[i][j]) ++j;
        if (j < length || (q + length < end && !is_space(q[length]))) continue;
        *value = i < 2 ? (negative ? -Py_HUGE_VAL : Py_HUGE_VAL) : (negative ? -Py_NAN : Py_NAN);
        *pp = q + length;
        return NUM_OK;
    }
    return NUM_BAD;
}

/*
 * Read one number starting at *pp (not a space).  On NUM_OK *value holds it and
 * *pp points past it; NUM_SLOW: the grammar holds but the exact fast path does
 * not apply (*pp points past it); NUM_BAD: not a plain number (*pp unchanged).
 */
static inline int read_number(const unsigned char **pp, const unsigned char *end, double *value) {
    const unsigned char *q = *pp;
    int negative = 0;
    if (*q == '+' || *q == '-') {
        negative = (*q == '-');
        ++q;
    }
    uint64_t w = 0;
    int digits = 0, scale = 0, seen = 0, slow = 0;
    /* Digits count from the first one read, leading zeros included: with at most
     * 19 of them w < 10^19 cannot overflow, and a number with more goes the slow
     * (still exact) way. */
    while (q < end && is_digit(*q)) {
        seen = 1;
        if (digits < 19) {
            w = w * 10 + (unsigned)(*q - '0');
            digits += (w != 0);
        } else {
            slow = 1;
        }
        ++q;
    }
    if (q < end && *q == '.') {
        ++q;
#if DFTFLOW_SWAR
        while (end - q >= 8 && digits <= 11) {
            uint64_t chunk = load8(q);
            if (!eight_digits(chunk)) break;
            w = w * 100000000u + parse_eight(chunk);
            digits = w != 0 ? digits + 8 : 0;
            scale -= 8;
            seen = 1;
            q += 8;
        }
#endif
        while (q < end && is_digit(*q)) {
            seen = 1;
            if (digits < 19) {
                w = w * 10 + (unsigned)(*q - '0');
                digits += (w != 0);
                --scale;
            } else {
                slow = 1;
            }
            ++q;
        }
    }
    if (!seen) return read_special(pp, q, end, negative, value);
    if (q < end && (*q == 'E' || *q == 'e')) {
        ++q;
        int eneg = 0;
        if (q < end && (*q == '+' || *q == '-')) {
            eneg = (*q == '-');
            ++q;
        }
        if (q >= end || !is_digit(*q)) return NUM_BAD;
        int exponent = 0;
        while (q < end && is_digit(*q)) {
            if (exponent < 100000) exponent = exponent * 10 + (*q - '0');
            ++q;
        }
        scale += eneg ? -exponent : exponent;
    }
    if (q < end && !is_space(*q)) return NUM_BAD; /* '0.1-100', '1.0D+02', '1.2.3', ... */
    *pp = q;
    if (slow) return NUM_SLOW;
    if (w == 0) {
        *value = negative ? -0.0 : 0.0;
        return NUM_OK;
    }
    if (w > ((uint64_t)1 << 53) || scale < -22 || scale > 22) return NUM_SLOW;
    double v = (double)w;
    v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
    *value = negative ? -v : v;
    return NUM_OK;
}

#if DFTFLOW_SWAR
static const uint64_t POW10_INT[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/* Bytes that are not ASCII digits: nonzero bytes of the result (carries only reach later bytes). */
static inline uint64_t non_digits(uint64_t v) {
    return ((v & 0xF0F0F0F0F0F0F0F0u) | (((v + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) >> 4)) ^
           0x3333333333333333u;
}

/*
 * The field VASP writes, [-]0.dddddddd[d...]E+dd or [-].dddddddd[d...]E-dd with 8 to
 * 15 mantissa digits, read with two eight-byte loads.  NUM_BAD leaves the token to
 * the general reader.  The caller guarantees 32 readable bytes from *pp.
 */
static inline int read_e_format(const unsigned char **pp, const unsigned char *end, double *value) {
    const unsigned char *q = *pp;
    int negative = (*q == '-');
    q += negative;
    if (q[0] == '0' && q[1] == '.') {
        q += 2;
    } else if (q[0] == '.') {
        q += 1;
    } else {
        return NUM_BAD;
    }
    uint64_t head = load8(q), tail = load8(q + 8);
    uint64_t stop = non_digits(tail);
    if (non_digits(head) != 0 || stop == 0) return NUM_BAD;
    int k = __builtin_ctzll(stop) >> 3; /* digits in the second load, 0..7 */
    uint64_t w = parse_eight(head);
    if (k) w = w * POW10_INT[k] + parse_eight((tail << (8 * (8 - k))) | (0x3030303030303030u >> (8 * k)));
    q += 8 + k;
    int scale = -(8 + k);
    if (*q == 'E' || *q == 'e') {
        int eneg = (q[1] == '-');
        q += 1 + (q[1] == '-' || q[1] == '+');
        if (!is_digit(q[0]) || !is_digit(q[1]) || is_digit(q[2])) return NUM_BAD;
        int exponent = (q[0] - '0') * 10 + (q[1] - '0');
        scale += eneg ? -exponent : exponent;
        q += 2;
    }
    if (q > end || (q < end && !is_space(*q))) return NUM_BAD;
    if (scale < -22 || scale > 22) {
        *pp = q;
        return NUM_SLOW;
    }
    *pp = q;
    if (w == 0) {
        *value = negative ? -0.0 : 0.0;
        return NUM_OK;
    }
    double v = (double)w; /* w < 10^15 < 2^53: exact */
    v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
    *value = negative ? -v : v;
    return NUM_OK;
}
#endif

/* The exact value of token [p, q) through the C library (or Python's own reader). */
static int read_slow(const unsigned char *p, const unsigned char *q, double *value, PyThreadState **save) {
    char small[80], *token = small;
    size_t length = (size_t)(q - p);
    if (length >= sizeof small && (token = malloc(length + 1)) == NULL) return 0;
    memcpy(token, p, length);
    token[length] = '\0';
    char *stop = NULL;
#if HAVE_STRTOD_L
    (void)save;
    *value = strtod_l(token, &stop, c_locale);
    int ok = stop == token + length;
#else
    PyEval_RestoreThread(*save);
    *value = PyOS_string_to_double(token, &stop, NULL);
    int ok = !PyErr_Occurred() && stop == token + length;
    PyErr_Clear();
    *save = PyEval_SaveThread();
#endif
    if (token != small) free(token);
    return ok;
}

/*
 * The number that starts at p (not a space) and ends before `end`: the
 * eight-digit reader where 32 bytes can be read, else the general one, and
 * strtod for what neither reads exactly.  Returns 1 with *value set and *next
 * just past the number, 0 for a token that is not a plain number.
 */
static inline int read_token(const unsigned char *p, const unsigned char *end, const unsigned char *text_end,
                             const unsigned char **next, double *value, PyThreadState **save) {
    const unsigned char *q = p;
    int kind = NUM_BAD;
#if DFTFLOW_SWAR
    if (text_end - p >= 32) kind = read_e_format(&q, end, value);
    if (kind == NUM_BAD)
#else
    (void)text_end;
#endif
        kind = read_number(&q, end, value);
    if (kind == NUM_BAD || (kind == NUM_SLOW && !read_slow(p, q, value, save))) return 0;
    *next = q;
    return 1;
}

/* Whether `out` is a contiguous float64 buffer; sets TypeError when it is not. */
static int float64_buffer(const Py_buffer *out) {
    if (out->itemsize != 8 || out->len % 8 != 0 || !PyBuffer_IsContiguous(out, 'C') ||
        (out->format != NULL && strcmp(out->format, "d") != 0)) {
        PyErr_SetString(PyExc_TypeError, "out must be a contiguous float64 buffer");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(parse_doubles_doc,
"parse_doubles(buf, start, end, out) -> (count, stop)\n\n"
"Read whitespace-separated numbers from buf[start:end] into the float64 buffer\n"
"``out`` until it is full, the text ends, or a token is not a plain decimal\n"
"number.  ``count`` numbers were stored; ``stop`` is the offset just after the\n"
"last of them (or ``start``).  Values equal float(token) bit for bit.");

static PyObject *parse_doubles(PyObject *self, PyObject *args) {
    Py_buffer text, out;
    Py_ssize_t start, end;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnw*", &text, &start, &end, &out)) return NULL;
    PyObject *result = NULL;
    if (!float64_buffer(&out)) goto done;
    if (start < 0 || end > text.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within buf, start <= end");
        goto done;
    }
    {
        const unsigned char *base = (const unsigned char *)text.buf;
        const unsigned char *p = base + start, *stop_at = base + end, *last = p, *text_end = base + text.len;
        double *values = (double *)out.buf;
        Py_ssize_t capacity = out.len / 8, count = 0;
        PyThreadState *save = PyEval_SaveThread();
        while (count < capacity) {
            while (p < stop_at && is_space(*p)) ++p;
            double v;
            if (p >= stop_at || !read_token(p, stop_at, text_end, &p, &v, &save)) break;
            values[count++] = v;
            last = p;
        }
        PyEval_RestoreThread(save);
        result = Py_BuildValue("nn", count, (Py_ssize_t)(last - base));
    }
done:
    PyBuffer_Release(&text);
    PyBuffer_Release(&out);
    return result;
}

#if DFTFLOW_SWAR
/*
 * The layout of a grid's fields, taken from its first field: the mantissa's
 * digit count (8..15, so w < 10^15 < 2^53 stays exact).  Fields that match
 * are read at fixed offsets from their end: [spaces][-][0].ddd...dE+dd.
 */
typedef struct {
    int digits; /* mantissa digits after the point; 0: no template */
} Template;

static Template field_template(const unsigned char *field, Py_ssize_t width) {
    Template t = {0};
    if (width < 14 || width > 40) return t;
    const unsigned char *end = field + width;
    if (!(end[-4] == 'E' || end[-4] == 'e')) return t;
    const unsigned char *dot = memchr(field, '.', (size_t)width);
    if (dot == NULL) return t;
    int digits = (int)(end - 4 - dot - 1);
    if (digits < 8 || digits > 15) return t;
    t.digits = digits;
    return t;
}

/* One field read by the template, or NUM_BAD (the general reader then takes it). */
static inline int read_templated(const unsigned char *field, const unsigned char *end, Template t,
                                 const unsigned char *base, double *value) {
    const int digits = t.digits;
    const unsigned char *dot = end - 5 - digits;
    if (*dot != '.' || end - 20 < base) return NUM_BAD;
    /* before the point: spaces, then an optional '-', then an optional '0' */
    Py_ssize_t i = dot - field - 1;
    if (i >= 0 && field[i] == '0') --i;
    int negative = 0;
    if (i >= 0 && field[i] == '-') {
        negative = 1;
        --i;
    }
    for (; i >= 0; --i)
        if (field[i] != ' ') return NUM_BAD;
    if (!(end[-4] == 'E' || end[-4] == 'e') || !(end[-3] == '+' || end[-3] == '-') || !is_digit(end[-2]) ||
        !is_digit(end[-1]))
        return NUM_BAD;
    uint64_t tail = load8(end - 12); /* the last eight mantissa digits */
    uint64_t keep = digits > 8 ? ~(uint64_t)0 << (8 * (16 - digits)) : 0;
    uint64_t head = (load8(end - 20) & keep) | (0x3030303030303030u & ~keep); /* the first ones, '0'-padded */
    if (non_digits(tail) | non_digits(head)) return NUM_BAD;
    uint64_t w = parse_eight(head) * 100000000u + parse_eight(tail);
    int exponent = (end[-2] - '0') * 10 + (end[-1] - '0');
    int scale = (end[-3] == '-' ? -exponent : exponent) - digits;
    if (scale < -22 || scale > 22) return NUM_SLOW;
    if (w == 0) {
        *value = negative ? -0.0 : 0.0;
        return NUM_OK;
    }
    double v = (double)w;
    v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
    *value = negative ? -v : v;
    return NUM_OK;
}
#endif

PyDoc_STRVAR(parse_fixed_doc,
"parse_fixed(buf, start, line_width, per_line, out) -> count\n\n"
"Read len(out) numbers laid out as VASP writes a grid: lines of ``line_width``\n"
"bytes (newline included) from ``start``, each of ``per_line`` right-aligned\n"
"fields of equal width.  Every field is read on its own, so the CPU overlaps\n"
"them.  Returns how many were read before a field that is not a plain number\n"
"filling its field (the caller then reads the block token by token); values\n"
"equal float(field) bit for bit.");

static PyObject *parse_fixed(PyObject *self, PyObject *args) {
    Py_buffer text, out;
    Py_ssize_t start, line_width, per_line;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnnw*", &text, &start, &line_width, &per_line, &out)) return NULL;
    PyObject *result = NULL;
    if (!float64_buffer(&out)) goto done;
    if (per_line < 1 || line_width < 2 || (line_width - 1) % per_line != 0 || start < 0) {
        PyErr_SetString(PyExc_ValueError, "the line width (newline included) must hold per_line equal fields");
        goto done;
    }
    {
        const unsigned char *base = (const unsigned char *)text.buf, *text_end = base + text.len;
        const Py_ssize_t field = (line_width - 1) / per_line, n = out.len / 8;
        double *values = (double *)out.buf;
        Py_ssize_t count = 0;
        PyThreadState *save = PyEval_SaveThread();
#if DFTFLOW_SWAR
        const Template t = base + start + field <= text_end ? field_template(base + start, field) : (Template){0};
#endif
        for (const unsigned char *line = base + start; count < n; line += line_width) {
            for (Py_ssize_t column = 0; column < per_line && count < n; ++column, ++count) {
                const unsigned char *p = line + column * field, *stop = p + field;
                if (stop > text_end) goto finished;
#if DFTFLOW_SWAR
                if (t.digits) {
                    double v;
                    if (read_templated(p, stop, t, base, &v) == NUM_OK) {
                        values[count] = v;
                        continue;
                    }
                }
#endif
                while (p < stop && *p == ' ') ++p;
                const unsigned char *q;
                double v;
                if (p == stop || !read_token(p, stop, text_end, &q, &v, &save) || q != stop) goto finished;
                values[count] = v;
            }
        }
    finished:
        PyEval_RestoreThread(save);
        result = PyLong_FromSsize_t(count);
    }
done:
    PyBuffer_Release(&text);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(shuffle_chunk_doc,
"shuffle_chunk(grid, z0, depth) -> bytes\n\n"
"The HDF5 chunk grid[:, :, z0:z0+depth] of a float32 (nx, ny, nz) array in C or\n"
"Fortran memory order, as HDF5's shuffle filter leaves it: the chunk in C order\n"
"(zero-padded past nz, as HDF5 stores edge chunks), byte j of every value in\n"
"plane j.  One pass, no temporary, without the GIL.");

static PyObject *shuffle_chunk(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t z0, depth;
    Py_buffer grid;
    (void)self;
    if (!PyArg_ParseTuple(args, "Onn", &obj, &z0, &depth)) return NULL;
    if (PyObject_GetBuffer(obj, &grid, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return NULL;
    PyObject *result = NULL;
    if (grid.ndim != 3 || grid.itemsize != 4 || grid.format == NULL || strchr(grid.format, 'f') == NULL ||
        strchr(grid.format, '>') != NULL || strchr(grid.format, '!') != NULL) {
        PyErr_SetString(PyExc_TypeError, "grid must be a 3-D native float32 array");
        goto done;
    }
    const Py_ssize_t nx = grid.shape[0], ny = grid.shape[1], nz = grid.shape[2];
    const Py_ssize_t sx = grid.strides[0], sy = grid.strides[1], sz = grid.strides[2];
    if (depth < 1 || z0 < 0 || z0 >= nz) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= z0 < nz and depth >= 1");
        goto done;
    }
    const Py_ssize_t count = nx * ny * depth, have = z0 + depth <= nz ? depth : nz - z0;
    result = PyBytes_FromStringAndSize(NULL, 4 * count);
    if (result == NULL) goto done;
    {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        unsigned char *plane0 = out, *plane1 = out + count, *plane2 = out + 2 * count, *plane3 = out + 3 * count;
        const char *base = (const char *)grid.buf + z0 * sz;
        Py_BEGIN_ALLOW_THREADS
        if (have < depth) memset(out, 0, (size_t)(4 * count));
        if (sz == 4) { /* C order: runs along z are contiguous on both sides */
            for (Py_ssize_t x = 0; x < nx; ++x) {
                for (Py_ssize_t y = 0; y < ny; ++y) {
                    const unsigned char *from = (const unsigned char *)(base + x * sx + y * sy);
                    const Py_ssize_t e = (x * ny + y) * depth;
                    for (Py_ssize_t dz = 0; dz < have; ++dz, from += 4) {
                        plane0[e + dz] = from[0];
                        plane1[e + dz] = from[1];
                        plane2[e + dz] = from[2];
                        plane3[e + dz] = from[3];
                    }
                }
            }
        } else { /* Fortran order (or any other): read along x */
            for (Py_ssize_t dz = 0; dz < have; ++dz) {
                for (Py_ssize_t y = 0; y < ny; ++y) {
                    const char *row = base + dz * sz + y * sy;
                    Py_ssize_t e = y * depth + dz;
                    for (Py_ssize_t x = 0; x < nx; ++x, e += ny * depth) {
                        const unsigned char *from = (const unsigned char *)(row + x * sx);
                        plane0[e] = from[0];
                        plane1[e] = from[1];
                        plane2[e] = from[2];
                        plane3[e] = from[3];
                    }
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
done:
    PyBuffer_Release(&grid);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_doubles", parse_doubles, METH_VARARGS, parse_doubles_doc},
    {"parse_fixed", parse_fixed, METH_VARARGS, parse_fixed_doc},
    {"shuffle_chunk", shuffle_chunk, METH_VARARGS, shuffle_chunk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "Compiled helpers for reading and storing CHGCAR grids.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
#if HAVE_STRTOD_L
    if (c_locale == (locale_t)0) {
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        if (c_locale == (locale_t)0) {
            PyErr_SetString(PyExc_OSError, "cannot create the C locale");
            return NULL;
        }
    }
#endif
    return PyModule_Create(&module);
}
