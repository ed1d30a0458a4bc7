"""The standard library of NCLlama, as plain Python in the compiler's subset.

This file is both importable (tests run these functions natively, as the reference) and read as text by the
compiler (``modeling_nclama.compiler.compile_source``); it must not import anything.

Values are unsigned: every int is in ``[0, V)`` and arithmetic wraps modulo ``V`` on the machine. So the code never
forms a negative number (``while j > 0 and xs[j - 1] > key``, not ``j >= 0``) and avoids products that could
overflow (``isqrt`` tests ``r + 1 <= n // (r + 1)``, not ``(r + 1) * (r + 1) <= n``). Ring functions (``factorial``,
``power``, ``fib``) are exact modulo ``V``.

Lists: a list is stored in memory as its length followed by its items; ``[0] * n`` bump-allocates. Memory has ``V``
cells in all (cell 0 is the heap pointer), so inputs plus everything a call allocates must fit.

Digit tapes: numbers too large for one value are lists of base-10 digits, least significant digit first
(``123`` is ``[3, 2, 1]``); leading zeros at the high end are allowed (``[3, 2, 1, 0, 0]`` is also 123). The
``long_*`` functions and the ``*_tape`` functions work on tapes (``sum_list_tape`` only returns one). Requirements on ``V``:
  * ``long_add``, ``long_sub``, ``long_cmp``: V >= 20 (a digit sum with carry is at most 19).
  * ``long_mul``: V >= 100 (a digit product plus the partial result plus the carry is at most 99).
  * ``factorial_tape(n)``: 10 * n <= V (digit * n + carry < V); ``power_tape(a, n)``: 10 * a <= V,
    and a ** n must fit the tape of 2 * n + 2 digits (always when a <= 100).
  * ``fib_tape(n)``: V >= 20; the two tapes of ``n // 4 + 2`` digits are updated in place (no heap growth per step).
  * ``sum_list_tape(xs)``: V >= 20 (a digit plus a digit is at most 18). Its parameter is a list of values (each
    below V), not a tape; only its result is a tape, of ``digits(len(xs)) + digits(max(xs))`` digits (at least one),
    so the sum is exact for every list that fits in memory (at V = 1024: 64 items below 1000 sum to under 64000).
With V = 256: long_add of 40 + 40 digits, long_mul of 20 x 20 digits, fib_tape(100), factorial_tape(25) fit.
With V = 1024 (every number below 1000 is one value): the same, and factorial_tape(n) for n <= 102, power_tape(a, n)
for a <= 100 and n <= 100 (both take under the default max_steps of 200000), sum_list_tape of 64 items below 1000.
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
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


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


def long_add(a, b):
    n = max(len(a), len(b))
    out = [0] * (n + 1)
    carry = 0
    for i in range(n):
        s = carry
        if i < len(a):
            s += a[i]
        if i < len(b):
            s += b[i]
        out[i] = s % 10
        carry = s // 10
    out[n] = carry
    return out


def long_sub(a, b):
    out = [0] * len(a)
    borrow = 0
    for i in range(len(a)):
        d = a[i] + 10 - borrow
        if i < len(b):
            d -= b[i]
        out[i] = d % 10
        borrow = 1 - d // 10
    return out


def long_mul(a, b):
    out = [0] * (len(a) + len(b))
    for i in range(len(a)):
        carry = 0
        for j in range(len(b)):
            t = out[i + j] + a[i] * b[j] + carry
            out[i + j] = t % 10
            carry = t // 10
        out[i + len(b)] = carry
    return out


def long_cmp(a, b):
    for i in range(max(len(a), len(b)) - 1, -1, -1):
        x = a[i] if i < len(a) else 0
        y = b[i] if i < len(b) else 0
        if x != y:
            return 2 if x > y else 0
    return 1


def mul_small(tape, m):
    """tape = tape * m in place (m < V // 10); returns the carry that did not fit."""
    carry = 0
    for i in range(len(tape)):
        t = tape[i] * m + carry
        tape[i] = t % 10
        carry = t // 10
    return carry


def factorial_tape(n):
    tape = [0] * (2 * n + 2)
    tape[0] = 1
    for i in range(2, n + 1):
        mul_small(tape, i)
    return tape


def power_tape(a, n):
    tape = [0] * (2 * n + 2)
    tape[0] = 1
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


def fib_tape(n):
    a = [0] * (n // 4 + 2)
    b = [0] * (n // 4 + 2)
    b[0] = 1
    for _ in range(n):
        add_into(a, b)
        a, b = b, a
    return a


def sum_list_tape(xs):
    """The sum of the items of xs (values, not digits) as a digit tape: each item is added digit by digit."""
    width = 0
    n = len(xs)
    while n > 0:
        n = n // 10
        width += 1
    m = max_list(xs)
    while m > 0:
        m = m // 10
        width += 1
    tape = [0] * max(width, 1)
    for x in xs:
        i = 0
        c = x
        while c > 0:
            t = tape[i] + c % 10
            tape[i] = t % 10
            c = c // 10 + t // 10
            i += 1
    return tape
