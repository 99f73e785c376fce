"""The dashboard's only stylesheet, served from ``/static/style.css`` (no external assets, no JS).

Kept as a Python string so it ships inside the wheel with no package-data configuration.
"""

CSS = """
:root { --ink:#1d2733; --muted:#5b6776; --line:#d9dee5; --bg:#f5f7fa; --card:#fff;
        --ok:#1f7a3d; --warn:#9a6200; --bad:#b3261e; --accent:#14508c; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; gap:1.5rem; padding:.6rem 1.5rem; background:var(--accent); color:#fff; }
header .brand { font-weight:700; letter-spacing:.02em; }
header .site { opacity:.85; font-size:.9em; }
header nav { display:flex; gap:1rem; flex:1; }
header nav a { color:#fff; text-decoration:none; padding:.2rem .1rem; border-bottom:2px solid transparent; }
header nav a.current { border-bottom-color:#fff; }
header form { margin:0; }
header .user { font-size:.9em; opacity:.9; margin-right:.5rem; }
main { max-width:1100px; margin:1.5rem auto; padding:0 1.5rem; }
h1 { font-size:1.4rem; margin:.2rem 0 1rem; }
h2 { font-size:1.1rem; margin:1.5rem 0 .6rem; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(190px, 1fr)); gap:.8rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; }
.card .label { color:var(--muted); font-size:.85em; }
.card .value { font-size:1.5rem; font-weight:600; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); }
th, td { text-align:left; padding:.45rem .7rem; border-bottom:1px solid var(--line); vertical-align:middle; }
th { background:#eef1f5; font-weight:600; font-size:.9em; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
code, .key { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:.9em; }
.badge { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:.85em; background:#e6ebf1; }
.badge.ok, .badge.pushed, .badge.deidentified, .badge.done { background:#dcf1e3; color:var(--ok); }
.badge.failing, .badge.failed, .badge.quarantined { background:#f9dedc; color:var(--bad); }
.badge.receiving, .badge.stable, .badge.processing, .badge.queued, .badge.pending, .badge.leased
  { background:#fff0d1; color:var(--warn); }
.health { padding:.8rem 1rem; border-radius:8px; margin-bottom:1rem; border:1px solid var(--line); background:var(--card); }
.health.ok { border-left:6px solid var(--ok); }
.health.failing { border-left:6px solid var(--bad); }
.health ul { margin:.3rem 0 0; padding-left:1.2rem; }
.flash { padding:.6rem 1rem; border-radius:6px; margin-bottom:1rem; background:#e3eefb; border:1px solid #b9d2f0; }
.flash.error { background:#f9dedc; border-color:#eab3ae; }
.notice { color:var(--muted); font-style:italic; }
form.inline { display:inline; margin:0 .3rem 0 0; }
button, .button { font:inherit; padding:.3rem .8rem; border-radius:6px; border:1px solid var(--accent);
                  background:var(--accent); color:#fff; cursor:pointer; text-decoration:none; }
button.secondary { background:#fff; color:var(--accent); }
button.danger { background:var(--bad); border-color:var(--bad); }
header button { background:transparent; border-color:#fff; }
label.confirm { font-size:.85em; color:var(--muted); margin-right:.3rem; }
.filters a { margin-right:.6rem; }
.filters a.current { font-weight:700; }
.pager { margin-top:.8rem; display:flex; gap:1rem; }
.login { max-width:360px; margin:4rem auto; background:var(--card); border:1px solid var(--line);
         border-radius:10px; padding:1.5rem 1.8rem; }
.login label { display:block; margin:.7rem 0 .2rem; }
.login input { width:100%; padding:.45rem; font:inherit; border:1px solid var(--line); border-radius:6px; }
.login button { margin-top:1rem; width:100%; padding:.5rem; }
.upload { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:1rem; }
.upload input[type=file] { margin:.5rem 0 1rem; }
footer { text-align:center; color:var(--muted); font-size:.8em; margin:2rem 0; }
"""
