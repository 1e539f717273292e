SELECT customers.customer_id, CASE WHEN ((+ customers.timezone IN ('Europe/London') OR customers.timezone IS NULL) AND substr(customers.birthday, 6, 5) IN ('12-09')) THEN '2011' END AS occurrence, NULL AS event_ref 
FROM customers 
WHERE customers.email IS NOT NULL AND (+ customers.timezone IN ('Europe/London') OR customers.timezone IS NULL) AND substr(customers.birthday, 6, 5) IN ('12-09') AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00.000000') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'birthday-greeting' AND enrollments.customer_id = customers.customer_id AND enrollments.occurrence_key = CASE WHEN ((+ customers.timezone IN ('Europe/London') OR customers.timezone IS NULL) AND substr(customers.birthday, 6, 5) IN ('12-09')) THEN '2011' END))
