# Shared by the inginious-tx helper commands (sourced, POSIX sh, busybox-safe).
# The helpers only store simple files; the agent validates them.

die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 2
}

# check_name NAME WHAT: NAME may become a file name (letters, digits, _ @ . -).
check_name() {
    case $1 in
        '' | [!A-Za-z0-9_@]* | *[!A-Za-z0-9_@.-]*) die "invalid $2 '$1' (allowed: letters, digits, _ @ . -)" ;;
    esac
}

feedback_dir() {
    [ -n "${INGINIOUS_FEEDBACK:-}" ] && [ -d "$INGINIOUS_FEEDBACK" ] ||
        die "INGINIOUS_FEEDBACK is not set: run this inside an inginious-tx job"
    FB=$INGINIOUS_FEEDBACK
}

# put FILE: replace FILE with standard input (written aside, then renamed).
put() {
    _tmp="$FB/.tmp.$$"
    cat >"$_tmp" && mv -f "$_tmp" "$1" || { rm -f "$_tmp"; die "cannot write $1"; }
}

check_result() {
    case $1 in
        success | failed | error | crash | timeout | overflow | killed) ;;
        *) die "invalid result '$1' (success, failed, error, crash, timeout, overflow or killed)" ;;
    esac
}
