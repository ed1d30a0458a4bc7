"""The standard library of NCLlama, as plain Python in the compiler's subset.

This file is both importable (tests run these functions natively, as the reference) and read as text by the
compiler (``modeling_nclama.toolchain.compiler.compile_source``); it must not import anything.

Values are unsigned: every int is in ``[0, V)`` and arithmetic wraps modulo ``V`` on the machine. So the code never
forms a negative number (``while j > 0 and xs[j - 1] > key``, not ``j >= 0``) and avoids products that could
overflow (``isqrt`` tests ``r + 1 <= n // (r + 1)``, not ``(r + 1) * (r + 1) <= n``). Ring functions (``factorial``,
``power``, ``fib``) are exact modulo ``V`` (``fib`` is iterative; ``fib_recursive`` is the same function by
recursion, depth n, the example of how training depends on depth).

Lists: a list is stored in memory as its length followed by its items; ``[0] * n`` bump-allocates. Memory has ``V``
cells in all (cell 0 is the heap pointer), so inputs plus everything a call allocates must fit.

Numbers as users write them, of any sign and length, are lists declared by a string annotation (``Library.run``
converts Python ints to them and back):

* ``"tape"``: ``[sign, d0, d1, ...]``, sign 0 (or 1 for a negative number), then base-10 digits, least significant
  first; leading zeros at the high end are allowed (``[0, 3, 2, 1, 0]`` is 123, ``[1, 5]`` is -5). Results write
  zero with sign 0; an input "-0" is zero.
* ``"numbers"``: a list of such numbers packed flat, ``[w, s0, d..., s1, d..., ...]``: ``w`` digits per item (short
  items padded with high zeros), each item a record of ``w + 1`` cells (sign, then its digits): ``[5, -12]`` is
  ``[2, 0, 5, 0, 1, 2, 1]``; the empty list is ``[1]``. A record is a tape, so ``max_number`` returns one.

``long_add``, ``long_sub``, ``long_mul``, ``long_cmp`` and ``long_gcd`` work on tapes; ``sort_numbers``,
``max_number``, ``min_number`` and ``sum_numbers`` on numbers lists; ``factorial_tape``, ``power_tape``,
``fib_tape`` and ``sum_list_tape`` return tapes. The max or min of an empty list is no number: those programs then
return a tape without digits, which the library reports as a "bad_result" rather than as a value. Requirements on
``V``:
  * ``long_add``, ``long_sub``, ``long_cmp``, ``long_gcd``, the numbers programs: V >= 20 (a digit sum with carry
    is at most 19).
  * ``long_mul``: V >= 100 (a digit product plus the partial result plus the carry is at most 99).
  * ``factorial_tape(n)``: 10 * n <= V (digit * n + carry < V); ``power_tape(a, n)``: 10 * a <= V,
    and a ** n must fit the tape of 2 * n + 2 digits (always when a <= 100).
  * ``fib_tape(n)``: V >= 20; the two tapes of ``n // 4 + 2`` digits are updated in place (no heap growth per step).
  * ``sum_list_tape(xs)``: V >= 20. Its parameter is a list of values (each below V), not a tape; its result has
    ``digits(len(xs)) + digits(max(xs))`` digits (at least one), so the sum is exact for every list that fits.
  * ``sort_numbers``: in place (it returns its argument), plus three lists of one cell per item and 21 counters.
With V = 256 (memory 255 cells): long_add of 40 + 40 digits, long_mul of 20 x 20 digits, long_gcd of 12-digit
numbers, fib_tape(100), factorial_tape(25), sort_numbers / sum_numbers of 12 six-digit or 20 three-digit numbers.
With V = 1024 (memory 1023 cells; every number below 1000 is one value): long_mul of 40 x 40 digits,
factorial_tape(n) for n <= 102, power_tape(a, n) for a <= 100 and n <= 100, sum_list_tape of 64 items below 1000,
the numbers programs on 64 numbers of up to 6 digits (64 three-digit numbers are 1 + 64 * 4 = 257 cells),
long_gcd of 100-digit numbers.
Steps (hard mode, V = 1024): sort_numbers of 64 three-digit numbers ~10,800 (a radix sort: linear in the cells),
sum_numbers ~4,100, max_number / min_number ~1,700, long_gcd of two 12-digit numbers ~16,600 and of two 3-digit
numbers ~1,600, long_add / long_sub of 40 digits ~700, long_mul of 20 x 20 digits ~5,800, fib(30) 156.
"""


def gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def factorial(n):
    r = 1
    for i in range(2, n + 1):
        r = r * i
    return r


def power(a, b):
    r = 1
    while b > 0:
        if b % 2 == 1:
            r = r * a
        a = a * a
        b = b // 2
    return r


def fib(n):
    a = 0
    b = 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fib_recursive(n):
    """The same as fib, recursively: the example of how recursion depth affects training (nclama analyze fib)."""
    if n < 2:
        return n
    return fib_recursive(n - 1) + fib_recursive(n - 2)


def isqrt(n):
    r = 0
    while r + 1 <= n // (r + 1):
        r += 1
    return r


def insertion_sort(xs):
    for i in range(1, len(xs)):
        key = xs[i]
        j = i
        while j > 0 and xs[j - 1] > key:
            xs[j] = xs[j - 1]
            j -= 1
        xs[j] = key
    return xs


def reverse(xs):
    n = len(xs)
    out = [0] * n
    for i in range(n):
        out[n - i - 1] = xs[i]
    return out


def sum_list(xs):
    s = 0
    for x in xs:
        s += x
    return s


def max_list(xs):
    m = 0
    for x in xs:
        m = max(m, x)
    return m


def count(xs, v):
    c = 0
    for x in xs:
        if x == v:
            c += 1
    return c


def index_of(xs, v):
    for i in range(len(xs)):
        if xs[i] == v:
            return i
    return len(xs)


def is_zero(t):
    """1 if the tape t is zero (whatever its sign), else 0."""
    for i in range(1, len(t)):
        if t[i] != 0:
            return 0
    return 1


def zero_unsigned(t):
    """t with the sign of a zero result made 0 (there is no -0)."""
    if is_zero(t) == 1:
        t[0] = 0
    return t


def abs_cmp(a, b):
    """Compares |a| and |b| of tapes: 0, 1, 2 for <, ==, >."""
    i = max(len(a), len(b)) - 1
    while i > 0:
        x = a[i] if i < len(a) else 0
        y = b[i] if i < len(b) else 0
        if x != y:
            return 2 if x > y else 0
        i -= 1
    return 1


def abs_add(a, b):
    """|a| + |b| as a new tape (sign 0)."""
    n = max(len(a), len(b))
    out = [0] * (n + 1)
    carry = 0
    for i in range(1, n):
        s = carry
        if i < len(a):
            s += a[i]
        if i < len(b):
            s += b[i]
        out[i] = s % 10
        carry = s // 10
    out[n] = carry
    return out


def abs_sub(a, b):
    """|a| - |b| for |a| >= |b|, as a new tape (sign 0)."""
    out = [0] * len(a)
    borrow = 0
    for i in range(1, len(a)):
        d = a[i] + 10 - borrow
        if i < len(b):
            d -= b[i]
        out[i] = d % 10
        borrow = 1 - d // 10
    return out


def signed_add(a, sa, b, sb):
    """(sa ? -|a| : |a|) + (sb ? -|b| : |b|) as a new tape: the signs come apart, so long_sub reuses it."""
    if sa == sb:
        out = abs_add(a, b)
        out[0] = sa
    elif abs_cmp(a, b) == 0:
        out = abs_sub(b, a)
        out[0] = sb
    else:
        out = abs_sub(a, b)
        out[0] = sa
    return zero_unsigned(out)


def long_add(a: "tape", b: "tape") -> "tape":
    return signed_add(a, a[0], b, b[0])


def long_sub(a: "tape", b: "tape") -> "tape":
    return signed_add(a, a[0], b, 1 - b[0])


def long_mul(a: "tape", b: "tape") -> "tape":
    out = [0] * (len(a) + len(b) - 1)
    for i in range(1, len(a)):
        carry = 0
        for j in range(1, len(b)):
            t = out[i + j - 1] + a[i] * b[j] + carry
            out[i + j - 1] = t % 10
            carry = t // 10
        out[i + len(b) - 1] = carry
    out[0] = (a[0] + b[0]) % 2
    return zero_unsigned(out)


def long_cmp(a: "tape", b: "tape") -> int:
    """0, 1, 2 for a < b, a == b, a > b."""
    sa = 0 if is_zero(a) == 1 else a[0]
    sb = 0 if is_zero(b) == 1 else b[0]
    if sa != sb:
        return 0 if sa == 1 else 2
    c = abs_cmp(a, b)
    if sa == 1:
        return 2 - c
    return c


def halve(t):
    """|t| // 2 in place (returns t)."""
    rest = 0
    i = len(t) - 1
    while i > 0:
        d = rest * 10 + t[i]
        t[i] = d // 2
        rest = d % 2
        i -= 1
    return t


def sub_into(a, b):
    """|a| - |b| in place, for |a| >= |b| (returns a)."""
    borrow = 0
    for i in range(1, len(a)):
        d = a[i] + 10 - borrow
        if i < len(b):
            d -= b[i]
        a[i] = d % 10
        borrow = 1 - d // 10
    return a


def long_gcd(a: "tape", b: "tape") -> "tape":
    """gcd(|a|, |b|) by binary GCD on decimal tapes (halving and subtraction, in place); gcd(0, 0) = 0."""
    n = max(len(a), len(b))
    x = [0] * n
    y = [0] * n
    for i in range(1, len(a)):
        x[i] = a[i]
    for i in range(1, len(b)):
        y[i] = b[i]
    if is_zero(x) == 1:
        return y
    if is_zero(y) == 1:
        return x
    shift = 0
    while x[1] % 2 == 0 and y[1] % 2 == 0:
        halve(x)
        halve(y)
        shift += 1
    while x[1] % 2 == 0:
        halve(x)
    while is_zero(y) == 0:
        while y[1] % 2 == 0:
            halve(y)
        if abs_cmp(x, y) == 2:
            x, y = y, x
        sub_into(y, x)
    out = [0] * (n + shift // 3 + 2)
    for i in range(1, n):
        out[i] = x[i]
    for _ in range(shift):
        mul_small(out, 2)
    return out


def record_cmp(xs, p, q):
    """Compares the numbers whose records start at p and q in a numbers list: 0, 1, 2 for <, ==, >."""
    if xs[p] != xs[q]:
        return 0 if xs[p] == 1 else 2
    i = xs[0]
    while i > 0:
        if xs[p + i] != xs[q + i]:
            if xs[p + i] > xs[q + i]:
                return 2 - 2 * xs[p]
            return 2 * xs[p]
        i -= 1
    return 1


def sort_numbers(xs: "numbers") -> "numbers":
    """Ascending, in place (returns xs). An LSD radix sort of the records' positions: one stable counting pass per
    digit, least significant first, over 20 keys (a negative number's digit d is key 9 - d, so that larger magnitudes
    come first, a non-negative number's is 10 + d, so that negative numbers come before the others), then the records
    are moved along the cycles of that permutation, each once. O(len(xs)) steps per digit; memory for three lists
    of len(xs) // (w + 1) cells."""
    w = xs[0]
    r = w + 1
    n = (len(xs) - 1) // r
    order = [0] * n
    other = [0] * n
    keys = [0] * n
    buckets = [0] * 21
    for k in range(n):
        order[k] = 1 + k * r
    for d in range(1, r):
        for c in range(21):
            buckets[c] = 0
        for k in range(n):
            p = order[k]
            key = xs[p + d] + 10
            if xs[p] == 1:
                key = 19 - key
            keys[k] = key
            buckets[key + 1] += 1
        for c in range(1, 20):
            buckets[c] += buckets[c - 1]
        for k in range(n):
            key = keys[k]
            other[buckets[key]] = order[k]
            buckets[key] += 1
        order, other = other, order
    permute_records(xs, order, r)
    p = 1
    while p < len(xs):
        if xs[p] == 1:
            d = 1
            while d < r and xs[p + d] == 0:
                d += 1
            if d == r:
                xs[p] = 0
        p += r
    return xs


def permute_records(xs, order, r):
    """Moves, in place, the record of r cells at position order[k] to position 1 + k * r (order is used up: each
    entry becomes 0 once its slot is filled)."""
    held = [0] * r
    for k in range(len(order)):
        if order[k] != 0:
            home = 1 + k * r
            for i in range(r):
                held[i] = xs[home + i]
            j = k
            to = home
            while order[j] != home:
                src = order[j]
                order[j] = 0
                for i in range(r):
                    xs[to + i] = xs[src + i]
                to = src
                j = (src - 1) // r
            order[j] = 0
            for i in range(r):
                xs[to + i] = held[i]
    return xs


def extreme_number(xs, larger):
    """The largest (larger = 2) or smallest (larger = 0) item as a tape; an empty list gives a tape without digits."""
    r = xs[0] + 1
    n = (len(xs) - 1) // r
    if n == 0:
        return [0]
    best = 1
    for k in range(1, n):
        if record_cmp(xs, 1 + k * r, best) == larger:
            best = 1 + k * r
    out = [0] * r
    for i in range(r):
        out[i] = xs[best + i]
    return zero_unsigned(out)


def max_number(xs: "numbers") -> "tape":
    return extreme_number(xs, 2)


def min_number(xs: "numbers") -> "tape":
    return extreme_number(xs, 0)


def sum_numbers(xs: "numbers") -> "tape":
    """The positive and the negative items summed apart (digit by digit into two tapes), then their difference."""
    w = xs[0]
    r = w + 1
    n = (len(xs) - 1) // r
    plus = [0] * (w + 5)
    minus = [0] * (w + 5)
    for k in range(n):
        p = 1 + k * r
        if xs[p] == 0:
            add_record(plus, xs, p)
        else:
            add_record(minus, xs, p)
    if abs_cmp(plus, minus) == 0:
        out = abs_sub(minus, plus)
        out[0] = 1
        return out
    return abs_sub(plus, minus)


def add_record(acc, xs, p):
    """|acc| += the magnitude of the record at p, in place (acc has room for the carries; returns acc)."""
    carry = 0
    for i in range(1, xs[0] + 1):
        s = acc[i] + xs[p + i] + carry
        acc[i] = s % 10
        carry = s // 10
    i = xs[0] + 1
    while carry > 0:
        s = acc[i] + carry
        acc[i] = s % 10
        carry = s // 10
        i += 1
    return acc


def mul_small(tape, m):
    """tape = tape * m in place (m < V // 10; a tape's sign cell, 0, stays 0); returns the carry that did not fit."""
    carry = 0
    for i in range(len(tape)):
        t = tape[i] * m + carry
        tape[i] = t % 10
        carry = t // 10
    return carry


def factorial_tape(n) -> "tape":
    tape = [0] * (2 * n + 3)
    tape[1] = 1
    for i in range(2, n + 1):
        mul_small(tape, i)
    return tape


def power_tape(a, n) -> "tape":
    tape = [0] * (2 * n + 3)
    tape[1] = 1
    for _ in range(n):
        mul_small(tape, a)
    return tape


def add_into(a, b):
    """a = a + b in place (same lengths); returns the final carry."""
    carry = 0
    for i in range(len(a)):
        s = a[i] + b[i] + carry
        a[i] = s % 10
        carry = s // 10
    return carry


def fib_tape(n) -> "tape":
    a = [0] * (n // 4 + 3)
    b = [0] * (n // 4 + 3)
    b[1] = 1
    for _ in range(n):
        add_into(a, b)
        a, b = b, a
    return a


def sum_list_tape(xs) -> "tape":
    """The sum of the items of xs (values, not digits) as a tape: each item is added digit by digit."""
    width = 0
    n = len(xs)
    while n > 0:
        n = n // 10
        width += 1
    m = max_list(xs)
    while m > 0:
        m = m // 10
        width += 1
    tape = [0] * (max(width, 1) + 1)
    for x in xs:
        i = 1
        c = x
        while c > 0:
            t = tape[i] + c % 10
            tape[i] = t % 10
            c = c // 10 + t // 10
            i += 1
    return tape
