"""Stage 4, the verdict: what the guest said (`notify`, `subtests`, `journal`,
`timeline`), how the run ended and what it means (`results`, `gates`), and what is kept
of it (`record`, `log_dir`), secrets withheld (`secrets`).
"""
