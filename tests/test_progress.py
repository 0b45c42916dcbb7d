"""Progress without a terminal (#18): plain lines on stderr at the start, periodically and at the
end, instead of nothing (tqdm with disable=None prints nothing when stderr is not a TTY)."""

from pafukv_jax import progress


def test_lines_without_a_terminal(capsys):
  with progress.progress(4, 'teacher', 'step', initial=1, every=0.0, tty=False) as bar:
    bar.set_postfix(loss='0.5')
    bar.update(1)
    bar.update(2)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0] == 'teacher: started at 1/4 steps'
  assert lines[1].startswith('teacher: 2/4 steps (') and lines[1].endswith('loss=0.5')
  assert lines[2].startswith('teacher: 4/4 steps (') and 's left' in lines[1]
  assert lines[-1].endswith(', done') and len(lines) == 4


def test_periodic_lines_are_rate_limited_and_a_stopped_job_says_so(capsys):
  bar = progress.progress(100, 'sweep', 'run', every=3600.0, tty=False)
  for _ in range(10):
    bar.set_postfix_str('window_b2_s0')
    bar.update()
  bar.close()
  bar.close()
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2 and lines[-1].startswith('sweep: 10/100 runs') and lines[-1].endswith(
      'window_b2_s0, stopped')


def test_a_terminal_gets_a_bar():
  bar = progress.progress(3, 'full', 'chunk', tty=True)
  try:
    assert type(bar).__module__.startswith('tqdm')
  finally:
    bar.close()
