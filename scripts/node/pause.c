/* The pod sandbox's process, as Kubernetes' own pause: sleeps until SIGINT/SIGTERM and reaps
 * zombies (it is PID 1 of the pod's shared namespaces). Built static by scripts/node/up into
 * the local image chatplane.local/pause, since no registry is reachable. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop}, on_child = {.sa_handler = reap};
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    on_child.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) pause();
    return 1;
}
