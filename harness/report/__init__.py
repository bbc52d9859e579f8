"""What people and CI read after a run, drawn from the records (result.json) alone: TAP
for meson (`tap`), the run's HTML report and JSON summary (`html`), and the boot chart
in the report (`timeline_chart`)."""
