"""``notebooks/quickstart.ipynb`` runs end to end in a Jupyter kernel of this interpreter (nbclient)."""

import os
import sys

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'quickstart.ipynb')


def _text(cell) -> str:
  """A code cell's printed text (stream outputs)."""
  return ''.join(out.get('text', '') for out in cell.get('outputs', []) if out['output_type'] == 'stream')


def test_quickstart_notebook_runs_end_to_end():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # Test-only last cell: which interpreter the kernel runs ('python3' is this virtualenv's ipykernel).
  notebook.cells.append(nbformat.v4.new_code_cell('import sys\nprint(sys.executable)'))
  # Raises CellExecutionError naming the cell on any error; timeout is per cell.
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': ROOT}}).execute()
  code_cells = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert all(out['output_type'] != 'error' for cell in code_cells for out in cell.outputs)
  text = '\n'.join(_text(cell) for cell in code_cells)
  assert 'step  30:' in text  # The progress callback's lines.
  assert 'realised sparsity: 0.900 (hardened again: 0.900)' in text
  assert any(out['output_type'] == 'display_data' and 'image/png' in out['data']
             for cell in code_cells for out in cell.outputs)  # The plot.
  difference = float(text.split('export vs run: ')[1].split()[0])
  assert difference < 1e-4
  assert os.path.realpath(_text(code_cells[-1]).strip()) == os.path.realpath(sys.executable)
