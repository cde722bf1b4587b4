"""Untrusted image bytes are parsed here, and only here, under a budget.

`decoding` runs the codecs of `service.imaging` in killable worker processes with a time limit, a
memory limit and a cap on how many run at once, and cancels a job when its client leaves. The server
process itself reads at most a bounded prefix of an upload (`headers`: a header beyond it is read by a
worker; `docs/reliability.md` lists each budget and where it is enforced).
"""
