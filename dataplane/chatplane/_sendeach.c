/* chatplane._sendeach: write one buffer to many sockets from a thread that
 * never takes the GIL (`Writer`).
 *
 * A large group's flush is the same frame for thousands of sockets; almost
 * all of its cost is the kernel's send (on loopback it also runs the
 * receiver's TCP stack). Done from Python each send holds the GIL and the
 * event loop; here a thread of its own writes (chatplane/gateway/bulk.py)
 * while the event loop serves everyone else. Each fd is a dup made when the
 * job is submitted and is closed after its send: the connection's own fd
 * may be closed (and its number reused) by the event loop meanwhile, a dup
 * cannot.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* Write buf to each fd (never blocking), closing each; sent[i] is the bytes
 * the kernel took (possibly fewer than len) or -errno. An fd < 0 is skipped
 * (sent[i] left as it is). No Python here: the writer thread runs it without the GIL. */
static void
send_all(const int *fds, Py_ssize_t n, const char *buf, Py_ssize_t len, Py_ssize_t *sent)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t done = 0;
        if (fds[i] < 0)
            continue; /* not written: sent[i] stays as the caller set it */
        while (done < len) {
            ssize_t r = send(fds[i], buf + done, (size_t)(len - done), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r > 0) {
                done += r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (done == 0)
                done = (r < 0) ? -(Py_ssize_t)errno : 0;
            break; /* full (EAGAIN after a partial write) or failed */
        }
        sent[i] = done;
        close(fds[i]);
    }
}

/* ---- Writer: a thread of its own that never takes the GIL ----------------
 *
 * A Python thread calling a C send loop still takes the GIL back between
 * two calls; preempted there (it runs at a lower priority than the event loop,
 * on purpose), it holds the GIL off the CPU and the event loop waits for it
 * (a priority inversion: loop stalls of 10 ms and more were measured). This
 * thread touches no Python object: `submit` (on the event loop, GIL held)
 * dups the fds and copies the frame into a job; the thread sends it and puts
 * the job on a done list and bumps an eventfd, which the event loop watches
 * and answers with `take`. */

typedef struct job {
    struct job *next;
    long long id;
    Py_ssize_t n;
    int *fds;          /* dups owned by the job: send_all closes them */
    Py_ssize_t *sent;
    char *buf;
    Py_ssize_t len;
    double cpu;        /* the thread's CPU seconds for this job */
} job_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job_t *todo_head, *todo_tail;
    job_t *done_head, *done_tail;
    int efd;
    int nice;
    int idle;
    int stopping;
    int started;
    int priority_failed;
    pthread_t thread;
    long long next_id;
} WriterObject;

static void
job_free(job_t *j)
{
    free(j->fds);
    free(j->sent);
    free(j->buf);
    free(j);
}

/* Close the job's dups that are still open (it will send nothing). */
static void
job_close_fds(job_t *j)
{
    for (Py_ssize_t i = 0; i < j->n; i++) {
        if (j->fds[i] >= 0)
            close(j->fds[i]);
        j->fds[i] = -1;
    }
}

/* Bump the eventfd the event loop watches (the lock held). */
static void
wake_loop(WriterObject *w)
{
    uint64_t one = 1;
    ssize_t r = write(w->efd, &one, sizeof one);
    (void)r;
}

/* Put a job on the done list for `take` (the lock held). */
static void
job_done(WriterObject *w, job_t *j)
{
    j->next = NULL;
    if (w->done_tail != NULL)
        w->done_tail->next = j;
    else
        w->done_head = j;
    w->done_tail = j;
    wake_loop(w);
}

static double
thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *
writer_main(void *arg)
{
    WriterObject *w = arg;
    int failed = 0;
    if (w->idle) {
        struct sched_param param = {0};
        failed = sched_setscheduler(0, SCHED_IDLE, &param) != 0;
    } else if (w->nice) {
        failed = setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), w->nice) != 0;
    }
    pthread_mutex_lock(&w->lock);
    w->priority_failed = failed;
    for (;;) {
        while (w->todo_head == NULL && !w->stopping)
            pthread_cond_wait(&w->wake, &w->lock);
        job_t *j = w->todo_head;
        if (j == NULL)
            break; /* stopping, and every job queued before was sent */
        w->todo_head = j->next;
        if (w->todo_head == NULL)
            w->todo_tail = NULL;
        pthread_mutex_unlock(&w->lock);

        double began = thread_cpu();
        send_all(j->fds, j->n, j->buf, j->len, j->sent);
        j->cpu = thread_cpu() - began;

        pthread_mutex_lock(&w->lock);
        job_done(w, j);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"nice", "idle", NULL};
    int nice = 0, idle = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ip:Writer", kwlist, &nice, &idle))
        return NULL;
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    WriterObject *w = (WriterObject *)type->tp_alloc(type, 0);
    if (w == NULL) {
        close(efd);
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    w->efd = efd;
    w->nice = nice;
    w->idle = idle;
    return (PyObject *)w;
}

/* Stop the thread after the jobs queued so far (GIL released while it
 * finishes them); what it sent is still there for `take`. */
static void
writer_stop(WriterObject *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(w->thread, NULL);
    Py_END_ALLOW_THREADS
    w->started = 0;
}

static void
Writer_dealloc(WriterObject *w)
{
    writer_stop(w);
    for (job_t *j = w->done_head; j != NULL;) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
    if (w->efd >= 0)
        close(w->efd);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* submit(fds: list[int], data: bytes) -> int
 * Queue `data` for each fd (< 0: skipped); returns the job's id. Each fd is
 * dup'ed here, GIL held, before anything else on the event loop can close
 * it; a dup that fails leaves that fd unwritten (sent 0). */
static PyObject *
Writer_submit(WriterObject *w, PyObject *args)
{
    PyObject *fds_obj;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O!y*:submit", &PyList_Type, &fds_obj, &data))
        return NULL;
    if (w->stopping) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_RuntimeError, "the writer is closed");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(fds_obj);
    job_t *j = calloc(1, sizeof *j);
    if (j != NULL) {
        j->fds = malloc(sizeof(int) * (n ? n : 1));
        j->sent = calloc((size_t)(n ? n : 1), sizeof(Py_ssize_t));
        j->buf = malloc((size_t)(data.len ? data.len : 1));
    }
    if (j == NULL || j->fds == NULL || j->sent == NULL || j->buf == NULL) {
        if (j != NULL)
            job_free(j);
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    memcpy(j->buf, data.buf, (size_t)data.len);
    j->len = data.len;
    PyBuffer_Release(&data);
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(fds_obj, i));
        if (fd == -1 && PyErr_Occurred()) {
            j->n = i;
            job_close_fds(j);
            job_free(j);
            return NULL;
        }
        j->fds[i] = fd >= 0 ? fcntl((int)fd, F_DUPFD_CLOEXEC, 0) : -1;
    }
    j->n = n;
    if (!w->started) {
        int err = pthread_create(&w->thread, NULL, writer_main, w);
        if (err != 0) {
            job_close_fds(j);
            job_free(j);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        w->started = 1;
    }
    pthread_mutex_lock(&w->lock);
    j->id = ++w->next_id;
    if (w->todo_tail != NULL)
        w->todo_tail->next = j;
    else
        w->todo_head = j;
    w->todo_tail = j;
    long long id = j->id;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    return PyLong_FromLongLong(id);
}

/* take() -> list[tuple[int, list[int], float]]
 * The jobs sent since the last call: (id, bytes sent or -errno per fd, the
 * thread's CPU seconds). Call it when fileno() is readable. */
static PyObject *
Writer_take(WriterObject *w, PyObject *Py_UNUSED(ignored))
{
    uint64_t count;
    ssize_t r = read(w->efd, &count, sizeof count); /* EAGAIN: nothing new */
    (void)r;
    pthread_mutex_lock(&w->lock);
    job_t *first = w->done_head, *last = w->done_tail;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->lock);
    PyObject *out = PyList_New(0);
    for (job_t *j = first; out != NULL && j != NULL; j = j->next) {
        PyObject *sent = PyList_New(j->n);
        for (Py_ssize_t i = 0; sent != NULL && i < j->n; i++) {
            PyObject *v = PyLong_FromSsize_t(j->sent[i]);
            if (v == NULL)
                Py_CLEAR(sent);
            else
                PyList_SET_ITEM(sent, i, v);
        }
        PyObject *item = sent ? Py_BuildValue("(LNd)", j->id, sent, j->cpu) : NULL;
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    if (out == NULL) {
        /* no memory for the answer: keep every job for the next take(), or
         * their sockets would stay lent */
        if (first != NULL) {
            pthread_mutex_lock(&w->lock);
            last->next = w->done_head;
            w->done_head = first;
            if (w->done_tail == NULL)
                w->done_tail = last;
            wake_loop(w);
            pthread_mutex_unlock(&w->lock);
        }
        return NULL;
    }
    for (job_t *j = first; j != NULL;) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
    return out;
}

/* cancel(job_id) -> bool
 * Take back a job the thread has not started: its fds are closed unwritten
 * (sent 0 each: the owners write the frame themselves) and it comes back
 * through take() like any other. False when it started or is done. */
static PyObject *
Writer_cancel(WriterObject *w, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    job_t *found = NULL;
    pthread_mutex_lock(&w->lock);
    for (job_t *prev = NULL, *j = w->todo_head; j != NULL; prev = j, j = j->next) {
        if (j->id != id)
            continue;
        if (prev != NULL)
            prev->next = j->next;
        else
            w->todo_head = j->next;
        if (w->todo_tail == j)
            w->todo_tail = prev;
        found = j;
        break;
    }
    if (found != NULL) {
        job_close_fds(found);
        job_done(w, found);
    }
    pthread_mutex_unlock(&w->lock);
    return PyBool_FromLong(found != NULL);
}

static PyObject *
Writer_fileno(WriterObject *w, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(w->efd);
}

static PyObject *
Writer_close(WriterObject *w, PyObject *Py_UNUSED(ignored))
{
    writer_stop(w);
    w->stopping = 1;
    Py_RETURN_NONE;
}

static PyObject *
Writer_priority_failed(WriterObject *w, void *Py_UNUSED(closure))
{
    pthread_mutex_lock(&w->lock);
    int failed = w->priority_failed;
    pthread_mutex_unlock(&w->lock);
    return PyBool_FromLong(failed);
}

static PyMethodDef Writer_methods[] = {
    {"submit", (PyCFunction)Writer_submit, METH_VARARGS,
     "submit(fds, data) -> job id: dup each fd (< 0: skipped) and queue data for them"},
    {"take", (PyCFunction)Writer_take, METH_NOARGS,
     "take() -> [(job id, bytes sent or -errno per fd, cpu seconds)] sent since the last call"},
    {"cancel", (PyCFunction)Writer_cancel, METH_O,
     "cancel(job id) -> bool: take back a job not started yet (sent 0 per fd)"},
    {"fileno", (PyCFunction)Writer_fileno, METH_NOARGS,
     "fileno() -> the eventfd that is readable when jobs are done"},
    {"close", (PyCFunction)Writer_close, METH_NOARGS,
     "close(): send what is queued, then stop the thread (take() still returns it)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"priority_failed", (getter)Writer_priority_failed, NULL,
     "the thread could not lower its priority (nice or SCHED_IDLE)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chatplane._sendeach.Writer",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writer(nice=0, idle=False): a thread that sends frames to dup'ed fds without the GIL",
    .tp_new = Writer_new,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chatplane._sendeach",
    "Write one buffer to many sockets from a thread that never takes the GIL.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__sendeach(void)
{
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
