"""What every process shares: option types, config loading and logging set-up
(:mod:`.options`), systemd integration (:mod:`.systemd`).
"""
