"""What a run means, pure: the console log format (console_log), crash and stage tables (crashes, stages),
the observation (observation), patch sites live vs ELF (sites), the patch-event trace (trace), and what the
debugger found, in the form the verdict reads and the artefacts keep (findings).
"""
