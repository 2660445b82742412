"""`ansible-playbook --list-tasks` that also lists what dynamic includes would run.

`ansible-playbook --list-tasks --tags configure` shows an `include_role`/`include_tasks` task but not the tasks it
includes: those are loaded at run time. This wrapper runs the real `ansible-playbook` CLI (same options, same
inventory, no host contacted) with one change: after Ansible's own tag filter (`Block.filter_tagged_tasks`, the
call the play iterator and the strategy's include loading use) has kept an include task, the blocks that include
would load are loaded the way the strategy loads them (`IncludeRole.get_block_list`, `load_list_of_blocks` with the
include's `apply` parent block), filtered by the same call, and listed right after it, recursively. `when:` is not
evaluated (as in `--list-tasks`): every task that the tags select is listed.

    python tests/unit/runbook_tasks.py -i <inventory> playbooks/onboard.yml --list-tasks --tags configure
    python tests/unit/runbook_tasks.py --batch < jobs.json   # [{"args": [...], "expand": true}, ...] -> JSON
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

from ansible import constants as C
from ansible.cli.playbook import PlaybookCLI
from ansible.context import GlobalCLIArgs
from ansible.parsing.vault import VaultSecretsContext
from ansible.playbook.block import Block
from ansible.playbook.helpers import load_list_of_blocks
from ansible.playbook.role_include import IncludeRole

_filter = Block.filter_tagged_tasks


def _include_target(task) -> str | None:
    args = task.args
    target = args.get('file') or args.get('_raw_params')
    if not target or '{{' in str(target):
        return None
    loader = task._loader
    if task._role is not None:
        return loader.path_dwim_relative(task._role._role_path, 'tasks', target)
    for base in task.get_search_path():
        for cand in (os.path.join(base, target), os.path.join(base, 'tasks', target)):
            if os.path.exists(cand):
                return cand
    return loader.path_dwim(target)


def _included_blocks(task, play) -> list:
    loader, vm = task._loader, task._variable_manager
    if isinstance(task, IncludeRole):
        blocks, _handlers = task.get_block_list(play=play, variable_manager=vm, loader=loader)
        return blocks
    if task.action in C._ACTION_INCLUDE_TASKS:
        path = _include_target(task)
        if path is None:
            raise ValueError(f'cannot resolve the file of the include {task.get_name()!r}')
        data = loader.load_from_file(path) or []
        return load_list_of_blocks(data, play=play, parent_block=task.build_parent_block(), role=task._role,
                                   use_handlers=False, variable_manager=vm, loader=loader)
    return []


def _expand(block: Block, all_vars, depth: int) -> Block:
    if depth > 8:
        raise RecursionError('includes nested more than 8 deep')

    def walk(items: list) -> list:
        out = []
        for item in items:
            if isinstance(item, Block):
                out.append(_expand(item, all_vars, depth))
                continue
            out.append(item)
            for included in _included_blocks(item, block._play):
                kept = _expand(_filter(included, all_vars), all_vars, depth + 1)
                if kept.has_tasks():
                    out.append(kept)
        return out

    block.block = walk(block.block)
    block.rescue = walk(block.rescue)
    block.always = walk(block.always)
    return block


def filter_tagged_tasks(self, all_vars):
    return _expand(_filter(self, all_vars), all_vars, 0)


def batch(jobs: list[dict]) -> list[dict]:
    """Many listings in one process (the test runs a few hundred): each job is {"args": [...], "expand": bool}."""
    results = []
    for job in jobs:
        Block.filter_tagged_tasks = filter_tagged_tasks if job.get('expand', True) else _filter
        # one of each per CLI run, and this process runs many: forget the previous run's
        VaultSecretsContext._current = None
        GlobalCLIArgs._Singleton__instance = None
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                rc = PlaybookCLI(['ansible-playbook', *job['args']]).run()
            except Exception as err:  # noqa: BLE001 - reported to the test with the listing
                rc = 1
                print(f'ERROR: {err!r}')
        results.append({'args': job['args'], 'expand': job.get('expand', True), 'rc': rc, 'stdout': out.getvalue()})
    Block.filter_tagged_tasks = _filter
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ['--batch']:
        json.dump(batch(json.load(sys.stdin)), sys.stdout)
        return 0
    Block.filter_tagged_tasks = filter_tagged_tasks
    return PlaybookCLI.cli_executor(['ansible-playbook', *argv])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
