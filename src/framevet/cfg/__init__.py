"""Stage 3: the control-flow graph.

Functions, instructions' successors, jump tables, noreturn callees, alternatives
and other special sections, objtool's annotations and framevet's declarations.
"""
