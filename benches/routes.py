"""Mixed route tables for the load benchmarks (prefixes, parameters, exact paths, hosts).

`python3 benches/routes.py N` prints N `[routes.*]` tables on upstream "u"; the load
scripts also import `routes(n)`. The request both scripts send to such a table,
/svc5001/items/42/detail, matches route r5001 (a parameter route) of any table of more
than 5,001 routes.
"""
import sys


def routes(n):
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            paths = f'["/svc{i}/items"]'
        elif kind == 1:
            paths = f'["/svc{i}/items/{{id}}/detail"]'
        elif kind == 2:
            paths = f'["=/svc{i}/health"]'
        else:
            paths = f'["/api/v{i % 7}/svc{i}"]'
        hosts = f'\nhosts = ["svc{i}.example.com", "*.svc{i}.example.net"]' if i % 5 == 4 else ""
        out.append(f'[routes.r{i}]\npaths = {paths}{hosts}\nupstream = "u"\n')
    return "\n".join(out)


if __name__ == "__main__":
    print(routes(int(sys.argv[1])))
