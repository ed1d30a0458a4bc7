"""Functions for `nclama compile` (the README's example): ints and lists of ints; if, while, for, calls, recursion."""


def triangle(n):
    total = 0
    for i in range(n + 1):
        total += i
    return total


def dot(xs, ys):
    total = 0
    for i in range(len(xs)):
        total += xs[i] * ys[i]
    return total
